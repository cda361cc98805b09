"""`[rabbitmq] urls`: the link starts at a random node (or the first listed), moves to the next
on failure, reconnects within about a probe interval once a node's port answers again however
long its backoff grew, and speaks amqps:// with the configured CA and client certificate.
`quorum_initial_group_size` reaches the queues. The cluster itself: tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from bridge.amqp import connection as link_module
from bridge.amqp.connection import AMQPLink, backoff_delay, connect_any, node_address
from bridge.amqp.topology import QueueKind, delay_arguments, queue_arguments
from bridge.config import RabbitMQSettings, Settings, load
from bridge.errors import BrokerUnavailable, ConfigError
from tests.conftest import RABBITMQCTL, eventually, loaded_for, trigger, write
from tests.daemon import TCPProxy, free_port

# --- pure: backoff, node order, configuration ---------------------------------------------------


def test_backoff_doubles_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    for rounds in range(1, 60):
        base = min(13.0, 0.2 * 2 ** (rounds - 1))
        delays = [backoff_delay(rounds, 13.0, rng) for _ in range(20)]
        assert all(base * 0.5 <= d <= base for d in delays), (rounds, delays)
        assert len(set(delays)) > 1  # jittered: replicas do not reconnect in lockstep
    assert backoff_delay(1, 30.0, rng) <= 0.2
    assert max(backoff_delay(40, 2.0, rng) for _ in range(50)) <= 2.0


def test_the_first_node_is_random_unless_listed() -> None:
    urls = [f"amqp://127.0.0.1:{5681 + i}/" for i in range(3)]
    starts = {AMQPLink(urls, "t", rng=random.Random(seed))._next for seed in range(40)}
    assert starts == {0, 1, 2}
    assert {AMQPLink(urls, "t", order="listed", rng=random.Random(s))._next for s in range(20)} == {
        0
    }
    assert AMQPLink("amqp://h/", "t")._next == 0
    assert node_address("amqps://u:p@mq.example/vh") == "mq.example:5671"
    assert node_address("amqp://u:p@10.0.0.1:5682/vh?heartbeat=2") == "10.0.0.1:5682"


def test_urls_in_the_configuration(tmp_path: Path, clean_env: None) -> None:
    path = write(
        tmp_path / "c.toml",
        """
        [rabbitmq]
        urls = ["amqp://u:p@mq-1:5672/%2F", "amqps://u:p@mq-2:5671/%2F"]
        url_order = "listed"
        quorum_initial_group_size = 3
        connect_timeout = "PT3S"
        reconnect_probe_interval = 0.5
        """,
    )
    rabbitmq = load(str(path)).settings.rabbitmq
    assert rabbitmq.nodes() == ["amqp://u:p@mq-1:5672/%2F", "amqps://u:p@mq-2:5671/%2F"]
    assert rabbitmq.url_order == "listed"
    assert rabbitmq.quorum_initial_group_size == 3
    assert rabbitmq.connect_timeout.total_seconds() == 3
    assert rabbitmq.reconnect_probe_interval.total_seconds() == 0.5
    assert rabbitmq.ssl_context() is None
    assert RabbitMQSettings().nodes() == ["amqp://guest:guest@127.0.0.1:5672/%2F"]
    assert "p@mq-1" not in repr(rabbitmq)  # secret in reprs and logs


def test_urls_from_the_environment(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_RABBITMQ__URLS", '["amqp://a:b@n1/%2F", "amqp://a:b@n2/%2F"]')
    assert load(None).settings.rabbitmq.nodes() == ["amqp://a:b@n1/%2F", "amqp://a:b@n2/%2F"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'url = "amqp://a/"\nurls = ["amqp://b/"]',
            "rabbitmq: set either url (one node) or urls (a cluster's nodes), not both",
        ),
        ('urls = ["amqp://b/", "http://c/"]', "rabbitmq.urls: urls[1] must be an amqp://"),
        ('tls_key = "k.pem"', "rabbitmq: tls_key and tls_key_password need tls_cert"),
        ('tls_ca = "missing.pem"', "rabbitmq.tls_ca: "),
        ('url_order = "sorted"', "rabbitmq.url_order"),
        ("quorum_initial_group_size = -1", "rabbitmq.quorum_initial_group_size"),
    ],
)
def test_rabbitmq_address_errors(tmp_path: Path, clean_env: None, body: str, expected: str) -> None:
    path = write(tmp_path / "c.toml", "[rabbitmq]\n" + body + "\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_url_from_the_environment_and_urls_in_the_file_conflict(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", '[rabbitmq]\nurls = ["amqp://b/"]\n')
    monkeypatch.setenv("BRIDGE_RABBITMQ__URL", "amqp://a/")
    with pytest.raises(ConfigError, match="not both"):
        load(str(path))


def test_quorum_initial_group_size_reaches_every_quorum_queue() -> None:
    kind = QueueKind("quorum", 3)
    assert queue_arguments(kind)["x-quorum-initial-group-size"] == 3
    assert delay_arguments(kind, 400)["x-quorum-initial-group-size"] == 3
    assert "x-quorum-initial-group-size" not in queue_arguments(QueueKind("quorum"))
    assert "x-quorum-initial-group-size" not in queue_arguments(QueueKind("classic", 3))
    assert queue_arguments("quorum") == queue_arguments(QueueKind("quorum", 0))


# --- TLS files -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | trustme.CA | object]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("bridge-client", common_name="bridge-client")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(folder / "client.pem"))
    client.private_key_pem.write_to_path(str(folder / "client.key"))
    return {"dir": folder, "ca": ca, "server": server}


def test_tls_files_are_relative_to_the_configuration_file(
    pki: dict[str, object], clean_env: None
) -> None:
    folder = pki["dir"]
    assert isinstance(folder, Path)
    path = write(
        folder / "c.toml",
        """
        [rabbitmq]
        url = "amqps://guest:guest@127.0.0.1:5671/%2F"
        tls_ca = "ca.pem"
        tls_cert = "client.pem"
        tls_key = "client.key"
        """,
    )
    rabbitmq = load(str(path)).settings.rabbitmq
    assert rabbitmq.tls_ca == str(folder / "ca.pem")
    context = rabbitmq.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    broken = write(
        folder / "broken.toml",
        '[rabbitmq]\ntls_cert = "ca.pem"\n',  # a certificate without its key
    )
    with pytest.raises(ConfigError, match=r"rabbitmq\.tls_cert: the TLS files cannot be loaded"):
        load(str(broken))


class TLSProxy:
    """A TLS endpoint on loopback in front of the local RabbitMQ (plain AMQP behind it), asking
    for a client certificate: what an amqps:// listener with verify_peer does."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.port = 0
        self.peers: list[str] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        for rdn in peer.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    self.peers.append(value)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.sleep(0.05)


async def test_amqps_with_the_configured_ca_and_client_certificate(
    pki: dict[str, object], amqp_url: str
) -> None:
    ca, server, folder = pki["ca"], pki["server"], pki["dir"]
    assert isinstance(ca, trustme.CA)
    assert isinstance(folder, Path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)  # type: ignore[attr-defined]
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    proxy = TLSProxy(context)
    await proxy.start()
    vhost = amqp_url.rsplit("/", 1)[1]
    url = f"amqps://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
    try:
        settings = RabbitMQSettings(
            url=url,  # type: ignore[arg-type]
            tls_ca=str(folder / "ca.pem"),
            tls_cert=str(folder / "client.pem"),
            tls_key=str(folder / "client.key"),
        )
        conn = await connect_any(settings.nodes(), ssl_context=settings.ssl_context())
        channel = await conn.channel()
        ok = await channel.queue_declare("tls-probe", durable=False, auto_delete=False)
        assert ok.queue == "tls-probe"
        await conn.close()
        assert proxy.peers == ["bridge-client"]
        # Without the client certificate the server refuses the handshake; without the CA,
        # bridge refuses the server: both are one sentence, no traceback.
        only_ca = RabbitMQSettings(url=url, tls_ca=str(folder / "ca.pem"))  # type: ignore[arg-type]
        with pytest.raises(BrokerUnavailable, match="RabbitMQ is unavailable"):
            await connect_any(only_ca.nodes(), ssl_context=only_ca.ssl_context(), timeout=3)
        with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
            await connect_any([url], timeout=3)
    finally:
        await proxy.close()


# --- failover on the real broker ----------------------------------------------------------------


def queue_arguments_of(vhost: str) -> str:
    return subprocess.run(
        [RABBITMQCTL, "-q", "list_queues", "-p", vhost, "name", "arguments"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def _at(amqp_url: str, port: int, query: str = "") -> str:
    vhost = amqp_url.rsplit("/", 1)[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/{vhost}{query}"


async def _proxy(port: int = 0) -> TCPProxy:
    proxy = TCPProxy(5672)
    proxy.port = port
    await proxy.start()
    return proxy


async def test_moves_to_the_next_node_when_its_node_goes(amqp_url: str) -> None:
    dead = free_port()
    first, second = await _proxy(), await _proxy()
    urls = [_at(amqp_url, p) for p in (dead, first.port, second.port)]
    link = AMQPLink(urls, "failover-test", order="listed", max_delay=5)
    link.start()
    try:
        await eventually(link.ready.is_set, timeout=10, what="the first connection")
        assert link.node == f"127.0.0.1:{first.port}"  # the dead node was skipped in the round
        connects = link.connects
        await first.close()  # the node goes: its connections are cut and its port refuses
        started = time.monotonic()
        await eventually(lambda: link.connects > connects, timeout=10, what="the failover")
        assert link.node == f"127.0.0.1:{second.port}"
        assert time.monotonic() - started < 3, "failover must not wait for a backoff"
    finally:
        await link.stop()
        await second.close()


async def test_reconnects_within_a_probe_once_a_node_answers_again(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backoff has grown long (10-20 s, as after minutes of outage); the port coming back
    # must end the wait within about one probe interval, not after the backoff.
    monkeypatch.setattr(link_module, "BACKOFF_START", 20.0)
    port = free_port()
    link = AMQPLink([_at(amqp_url, port)], "probe-test", max_delay=60, probe_interval=0.25)
    link.start()
    proxy = None
    try:
        await asyncio.sleep(1.0)
        assert not link.ready.is_set()
        proxy = await _proxy(port)
        back = time.monotonic()
        await eventually(link.ready.is_set, timeout=8, what="the reconnect after the port opened")
        assert time.monotonic() - back < 3
    finally:
        await link.stop()
        if proxy is not None:
            await proxy.close()


async def test_a_node_that_answers_but_fails_is_not_probed(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A port that accepts and hangs up (a broker refusing the login looks the same) is tried
    # at the backoff's pace only: probing it would hammer it every probe interval.
    monkeypatch.setattr(link_module, "BACKOFF_START", 2.0)
    proxy = TCPProxy(5672)
    proxy.refuse = True
    accepted = 0
    handle = proxy._handle

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await handle(reader, writer)

    proxy._handle = counting  # type: ignore[method-assign]
    await proxy.start()
    link = AMQPLink([_at(amqp_url, proxy.port)], "no-probe", probe_interval=0.1)
    link.start()
    try:
        await asyncio.sleep(2.5)
        assert not link.ready.is_set()
        assert 1 <= accepted <= 3, accepted
    finally:
        await link.stop()
        await proxy.close()


async def test_a_daemon_with_urls_serves_through_a_surviving_node(
    amqp_url: str, subscriber_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.app import App

    sub = await subscriber_factory()
    first, second = await _proxy(), await _proxy()
    settings = Settings(
        rabbitmq={
            "urls": [_at(amqp_url, first.port), _at(amqp_url, second.port)],
            "url_order": "listed",
            "publish_timeout": 2,
            "quorum_initial_group_size": 3,
        },
        ingress={"port": 0},
        admin={"port": 0},
        lifecycle={"drain_timeout": 5},
        triggers=[trigger("t", sub.url)],  # type: ignore[list-item]
    )
    app = App(loaded_for(settings), "all")
    await app.start()
    try:
        await eventually(lambda: app.not_ready_reason() is None, timeout=15, what="ready")
        assert app.link.node == f"127.0.0.1:{first.port}"
        await first.close()
        await eventually(
            lambda: (
                app.not_ready_reason() is None
                and app.link.node is not None
                and app.link.node.endswith(str(second.port))
            ),
            timeout=10,
            what="ready on the second node",
        )
        listing = await asyncio.to_thread(queue_arguments_of, amqp_url.rsplit("/", 1)[1])
        line = next(x for x in listing.splitlines() if x.startswith("bridge.trigger.default.t"))
        assert "x-quorum-initial-group-size" in line, line
        assert "3" in line, line
    finally:
        await app.drain()
        await second.close()


async def test_the_initial_group_size_never_blocks_an_existing_queue(
    bridge_factory, subscriber_factory
) -> None:
    # RabbitMQ refuses a redeclaration with another x-quorum-initial-group-size (or without
    # it): bridge keeps such a queue as it is, and still refuses a real change (ordered).
    sub = await subscriber_factory()
    first = await bridge_factory(
        triggers=[trigger("t", sub.url)], rabbitmq={"quorum_initial_group_size": 3}
    )
    await first.app.drain()
    for size in (0, 5):
        again = await bridge_factory(
            triggers=[trigger("t", sub.url)], rabbitmq={"quorum_initial_group_size": size}
        )
        assert again.app.link.fatal is None
        await again.app.drain()
    changed = await bridge_factory(
        triggers=[trigger("t", sub.url, ordered=True)],
        rabbitmq={"quorum_initial_group_size": 5},
        wait_ready=False,
    )
    await eventually(lambda: changed.app.link.fatal is not None, what="the refusal")
    assert "ordered changed" in str(changed.app.link.fatal)


async def test_a_delay_queue_made_with_another_group_size_still_takes_retries(
    bridge_factory, subscriber_factory
) -> None:
    seen: dict[str, int] = {}

    def answer(request):  # each event: 503 first, then 200
        event_id = request.headers["ce-id"]
        seen[event_id] = seen.get(event_id, 0) + 1
        return (503 if seen[event_id] == 1 else 200), {}, b""

    sub = await subscriber_factory(responder=answer)
    spec = trigger(
        "t", sub.url, delivery={"retry": 1, "backoffPolicy": "linear", "backoffDelay": "PT0.1S"}
    )
    body = '{"specversion":"1.0","id":"%s","source":"s","type":"t"}'
    for size, event_id in ((3, "made-with-3"), (0, "used-with-0"), (5, "used-with-5")):
        running = await bridge_factory(
            triggers=[spec], rabbitmq={"quorum_initial_group_size": size}
        )
        status, _, _ = await running.post(
            body=body % event_id, headers={"content-type": "application/json"}
        )
        assert status == 202
        await eventually(lambda e=event_id: seen.get(e) == 2, what=f"the retry of {event_id}")
        assert running.app.link.connects == 1  # the publisher's channel never failed
        await running.app.drain()
