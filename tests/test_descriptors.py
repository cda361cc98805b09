"""bridge.descriptors: the open-file watch reports pressure, logs it, and recovers."""

from __future__ import annotations

import logging
import os
import resource

import pytest

from bridge.descriptors import DescriptorWatch, raise_open_file_limit


@pytest.fixture
def low_limit():
    """Lower this process's soft limit to 40 above the descriptors open now; restore after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 40, hard))
    try:
        yield in_use + 40
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_pressure_is_reported_logged_and_cleared(low_limit: int, caplog) -> None:
    """Finding 11: running out of descriptors dropped connections with no log line and
    readiness unchanged."""
    watch = DescriptorWatch()
    assert watch.check() is None
    pipes = []
    try:
        with caplog.at_level(logging.WARNING, logger="bridge"):
            while len(os.listdir("/proc/self/fd")) < low_limit * 0.95:
                pipes.append(os.pipe())
            problem = watch.check()
        assert problem is not None
        assert f"of {low_limit} file descriptors are in use" in problem
        assert any("file descriptors in use" in r.getMessage() for r in caplog.records)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert watch.check() is None


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        expected = hard if hard != resource.RLIM_INFINITY else min(soft, 256)
        assert raise_open_file_limit() == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (expected, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
