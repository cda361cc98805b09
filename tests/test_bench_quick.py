"""The hot path end to end, as `make bench-quick` runs it: counts only, never timings.

bridge runs as a real process with one trigger and with five (fan-out), a load of events goes
through the ingress, and every accepted event must reach the counting sink once per trigger.
"""

from __future__ import annotations

import argparse

import pytest

from benchmarks.run import quick

pytestmark = pytest.mark.rabbit  # benchmarks.run makes its own vhost with rabbitmqctl


def test_every_accepted_event_is_delivered_through_the_hot_path(capsys):
    code = quick(argparse.Namespace(events=400))
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count(" ok") == 2, out
