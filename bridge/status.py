"""The status of a delivery attempt that got no HTTP answer, shared by the subscriber client
(which reports it) and the delivery policy (which retries it), so neither imports the other."""

from __future__ import annotations

# A connection error, a timeout or an invalid answer: Knative's `knativeerrorcode` -1.
NO_RESPONSE = -1
