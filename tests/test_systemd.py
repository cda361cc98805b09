"""bridge.systemd: the sd_notify protocol, against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real AF_UNIX datagram socket bound in tmp_path, as systemd's NOTIFY_SOCKET is."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def nothing_more(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    return False


def state(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines())


def test_ready_stopping_and_watchdog(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    assert n.enabled
    assert n.watchdog_interval() == 5.0  # half the watchdog timeout
    n.ready()
    ready = state(received(sock))
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(os.getpid())
    n.ready()  # READY=1 is sent once
    n.watchdog()
    assert received(sock) == "WATCHDOG=1"
    n.stopping()
    assert state(received(sock))["STOPPING"] == "1"
    assert nothing_more(sock)


def test_watchdog_for_this_pid_only(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    mine = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_interval() == 1.0
    mine.watchdog()
    assert received(sock) == "WATCHDOG=1"
    other = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert other.watchdog_interval() is None
    other.watchdog()
    assert nothing_more(sock)


@pytest.mark.parametrize("usec", ["", "0", "abc", "-5"])
def test_no_watchdog_without_a_usable_timeout(
    notify_socket: tuple[socket.socket, str], usec: str
) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec})
    assert n.watchdog_interval() is None
    n.watchdog()
    assert nothing_more(sock)


def test_abstract_socket_address() -> None:
    name = f"bridge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.enabled
        n.ready()
        assert state(received(sock))["READY"] == "1"
        assert n.send("STATUS=custom")
        assert received(sock) == "STATUS=custom"
    finally:
        sock.close()


def test_no_op_without_notify_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.send("READY=1") is False
    n.ready()
    n.stopping()
    n.watchdog()
    assert n.watchdog_interval() is None
    assert not Notifier({"NOTIFY_SOCKET": ""}).enabled


def test_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert n.enabled
    n.stopping()
    assert "STOPPING=1" in received(sock)
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled


def test_an_unreachable_socket_is_not_an_error(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock"), "WATCHDOG_USEC": "1000000"})
    assert n.enabled
    assert n.send("READY=1") is False
    n.ready()
    n.watchdog()
    n.stopping()


def test_ready_is_retried_when_it_could_not_be_sent(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    n.ready()  # nobody listens yet: not counted as sent
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))
        sock.settimeout(2.0)
        n.ready()
        assert state(received(sock))["READY"] == "1"
    finally:
        sock.close()
