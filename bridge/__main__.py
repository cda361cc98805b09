"""`python -m bridge` does what the `bridge` console script does."""

from bridge.cli import main

raise SystemExit(main())
