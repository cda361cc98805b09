"""https subscribers and dead-letter sinks: Knative `CACerts` (added to the system trust store, as
Knative does), host name checks, mutual TLS with `[subscribers] client_cert`/`client_key`, and the
configuration of both. Private CAs from `trustme`, real TLS servers on loopback.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from bridge.cli import main
from bridge.config import load
from bridge.errors import ConfigError
from bridge.http.client import SubscriberClient
from bridge.triggers import build_routes, describe
from tests.conftest import Running, eventually, get_all, queue_depth, write
from tests.raw_http import RawConnection, RawServer, answer

HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "test", "ce-type": "t"}


def pem(ca: trustme.CA) -> str:
    return ca.cert_pem.bytes().decode("ascii")


def server_context(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    """A server context presenting `cert`; with `client_ca`, a client must present a certificate
    that CA issued."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class TLSSubscriber:
    """Answers 200 to each request; records the ce-id and the client certificate's CN."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.peers: list[str | None] = []

    async def __call__(self, conn: RawConnection) -> None:
        while (request := await conn.request()) is not None:
            peer = conn.writer.get_extra_info("peercert")
            common_name = None
            if peer:
                for rdn in peer["subject"]:
                    for key, value in rdn:
                        if key == "commonName":
                            common_name = value
            self.ids.append(request.headers.get("ce-id", ""))
            self.peers.append(common_name)
            await conn.send(answer(200, b"secure"))


MakeTLS = Callable[..., Awaitable[tuple[RawServer, TLSSubscriber]]]


@pytest.fixture
async def tls_subscriber() -> AsyncIterator[MakeTLS]:
    made: list[RawServer] = []

    async def make(context: ssl.SSLContext) -> tuple[RawServer, TLSSubscriber]:
        handler = TLSSubscriber()
        server = await RawServer(handler, ssl_context=context).start()
        made.append(server)
        return server, handler

    yield make
    for server in made:
        await server.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA(organization_name="bridge tests")


@pytest.fixture
def client_files(tmp_path: Path, ca: trustme.CA) -> tuple[str, str]:
    """A client certificate issued by `ca` (CN bridge.test) and its key, as two PEM files."""
    cert = ca.issue_cert("bridge.test", common_name="bridge.test")
    cert_file = tmp_path / "client.crt"
    key_file = tmp_path / "client.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return str(cert_file), str(key_file)


async def post(client: SubscriberClient, url: str, ca_certs: str | None) -> Any:
    return await client.post(url, dict(HEADERS), b"x", 5.0, ca_certs)


# --- the client ----------------------------------------------------------------------------------


async def test_an_https_subscriber_is_verified_against_its_cacerts(
    ca: trustme.CA, tls_subscriber: MakeTLS
) -> None:
    server, handler = await tls_subscriber(server_context(ca.issue_cert("127.0.0.1")))
    client = SubscriberClient()
    try:
        trusted = await post(client, server.url, pem(ca))
        assert (trusted.status, trusted.body, trusted.error) == (200, b"secure", None)
        untrusted = await post(client, server.url, None)
        other = await post(client, server.url, pem(trustme.CA()))
    finally:
        await client.close()
    assert handler.ids == ["1"]  # the two failures sent nothing
    for failed in (untrusted, other):
        assert failed.status == -1
        assert not failed.permanent
        assert failed.error == (
            f"TLS certificate verification failed for 127.0.0.1:{server.port} "
            "(unable to get local issuer certificate)"
        )


async def test_the_host_name_is_checked(ca: trustme.CA, tls_subscriber: MakeTLS) -> None:
    server, handler = await tls_subscriber(server_context(ca.issue_cert("other.example")))
    client = SubscriberClient()
    try:
        got = await post(client, server.url, pem(ca))
    finally:
        await client.close()
    assert got.status == -1
    assert got.error is not None
    assert got.error.startswith("TLS certificate verification failed for 127.0.0.1:")
    assert "IP address mismatch" in got.error
    assert handler.ids == []


async def test_cacerts_add_to_the_system_trust_store(
    ca: trustme.CA, tls_subscriber: MakeTLS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Knative appends CACerts to the system pool: a subscriber whose CA only the system store
    holds is still trusted when its Destination names other CACerts."""
    system_ca = trustme.CA()
    store = tmp_path / "system-store.pem"
    system_ca.cert_pem.write_to_path(str(store))
    monkeypatch.setenv("SSL_CERT_FILE", str(store))  # OpenSSL's default store, for this test
    by_system, _ = await tls_subscriber(server_context(system_ca.issue_cert("127.0.0.1")))
    by_cacerts, _ = await tls_subscriber(server_context(ca.issue_cert("127.0.0.1")))
    client = SubscriberClient()
    try:
        system = await post(client, by_system.url, pem(ca))
        extra = await post(client, by_cacerts.url, pem(ca))
        neither = await post(client, by_cacerts.url, None)
    finally:
        await client.close()
    assert (system.status, system.error) == (200, None)
    assert (extra.status, extra.error) == (200, None)
    assert neither.status == -1


async def test_mutual_tls_with_the_client_certificate(
    ca: trustme.CA, tls_subscriber: MakeTLS, client_files: tuple[str, str]
) -> None:
    context = server_context(ca.issue_cert("127.0.0.1"), client_ca=ca)
    server, handler = await tls_subscriber(context)
    anonymous = SubscriberClient()
    identified = SubscriberClient(*client_files)
    try:
        without = await post(anonymous, server.url, pem(ca))
        with_cert = await post(identified, server.url, pem(ca))
    finally:
        await anonymous.close()
        await identified.close()
    assert without.status == -1  # the server ends the handshake: no request reached it
    assert (with_cert.status, with_cert.error) == (200, None)
    assert handler.peers == ["bridge.test"]


def test_a_client_certificate_that_cannot_load_is_a_config_error(
    client_files: tuple[str, str], tmp_path: Path
) -> None:
    cert, _ = client_files
    with pytest.raises(ConfigError, match=r"subscribers\.client_cert: .* cannot be loaded"):
        SubscriberClient(cert, str(tmp_path / "missing.key"))
    other_key = tmp_path / "other.key"
    other_key.write_bytes(trustme.CA().issue_cert("x").private_key_pem.bytes())
    with pytest.raises(ConfigError, match="cannot be loaded"):
        SubscriberClient(cert, str(other_key))  # a key that does not match the certificate


# --- end to end ----------------------------------------------------------------------------------


def https_trigger(name: str, url: str, ca_certs: str | None, **spec: Any) -> dict[str, Any]:
    subscriber: dict[str, Any] = {"uri": url}
    if ca_certs is not None:
        subscriber["CACerts"] = ca_certs
    return {
        "name": name,
        "broker": "eventbridge-default-broker",
        "subscriber": subscriber,
        "filter": {"attributes": {"type": name}},
        **spec,
    }


async def send(running: Running, event_id: str, type_: str) -> None:
    status, _, body = await running.post(
        "/",
        body=b"x",
        headers={
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "test",
            "ce-type": type_,
            "content-type": "text/plain",
        },
    )
    assert status == 202, body


async def test_https_subscribers_and_sinks_end_to_end(
    amqp: Any,
    ca: trustme.CA,
    tls_subscriber: MakeTLS,
    bridge_factory: Callable[..., Awaitable[Running]],
    subscriber_factory: Any,
) -> None:
    server, handler = await tls_subscriber(server_context(ca.issue_cert("127.0.0.1")))
    refusing = await subscriber_factory(script=[(400, {}, b"no")])
    sink, sink_handler = await tls_subscriber(server_context(ca.issue_cert("127.0.0.1")))
    delivery = {"retry": 1, "backoffDelay": "PT0.05S"}
    running = await bridge_factory(
        triggers=[
            https_trigger("trusted", server.url, pem(ca)),
            https_trigger("untrusted", server.url, None, delivery=delivery),
            https_trigger(
                "tosink",
                refusing.url,
                None,
                delivery={**delivery, "deadLetterSink": {"uri": sink.url, "CACerts": pem(ca)}},
            ),
        ]
    )
    await send(running, "tls-1", "trusted")
    await send(running, "tls-2", "untrusted")
    await send(running, "tls-3", "tosink")
    await eventually(lambda: handler.ids == ["tls-1"], what="the https delivery")
    await eventually(lambda: sink_handler.ids == ["tls-3"], what="the https dead-letter sink")
    dlq = "bridge.dlq.default.untrusted"

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, dlq) == 1

    await eventually(dead_lettered, what="the untrusted subscriber's dead letter")
    [letter] = await get_all(amqp, dlq)
    headers = letter.header.properties.headers
    error = headers["bridge-last-error"]
    error = error.decode() if isinstance(error, bytes) else str(error)
    assert error == (
        f"no response: TLS certificate verification failed for 127.0.0.1:{server.port} "
        "(unable to get local issuer certificate)"
    )
    assert int(str(headers["bridge-attempts"])) == 2
    assert handler.ids == ["tls-1"]


async def test_mutual_tls_end_to_end(
    ca: trustme.CA,
    tls_subscriber: MakeTLS,
    client_files: tuple[str, str],
    bridge_factory: Callable[..., Awaitable[Running]],
) -> None:
    context = server_context(ca.issue_cert("127.0.0.1"), client_ca=ca)
    server, handler = await tls_subscriber(context)
    cert, key = client_files
    running = await bridge_factory(
        triggers=[https_trigger("mtls", server.url, pem(ca))],
        subscribers={"client_cert": cert, "client_key": key},
    )
    await send(running, "mtls-1", "mtls")
    await eventually(lambda: handler.ids == ["mtls-1"], what="the mutual-TLS delivery")
    assert handler.peers == ["bridge.test"]


# --- configuration -------------------------------------------------------------------------------


def test_cacerts_are_checked_and_shown_by_check_config(
    ca: trustme.CA, tmp_path: Path, clean_env: None
) -> None:
    two = pem(ca) + pem(trustme.CA())
    config = write(
        tmp_path / "config.toml",
        f'''
        [[triggers]]
        name = "t"
        subscriber = {{ uri = "https://127.0.0.1:8443/", CACerts = """{two}""" }}
        delivery = {{ deadLetterSink = {{ uri = "https://127.0.0.1:8444/", CACerts = """{pem(ca)}""" }} }}
        ''',
    )
    text = describe(build_routes(load(str(config))))
    lines = text.splitlines()
    assert (
        "  subscriber: https://127.0.0.1:8443/ (CACerts: 2 certificates + system trust store)"
        in lines
    )
    assert (
        "deadLetterSink=https://127.0.0.1:8444/ (CACerts: 1 certificate + system trust store)"
        in text
    )
    bad = write(
        tmp_path / "bad.toml",
        """
        [[triggers]]
        name = "t"
        subscriber = { uri = "https://127.0.0.1:8443/", CACerts = "not a certificate" }
        """,
    )
    with pytest.raises(ConfigError, match=r"triggers\[0\]: subscriber: CACerts: not PEM"):
        build_routes(load(str(bad)))


def test_client_certificate_settings(
    client_files: tuple[str, str], tmp_path: Path, clean_env: None
) -> None:
    cert, key = client_files
    relative = write(
        tmp_path / "config.toml",
        """
        [subscribers]
        client_cert = "client.crt"
        client_key = "client.key"
        """,
    )
    settings = load(str(relative)).settings
    assert settings.subscribers.client_cert == cert  # relative to the configuration file
    assert settings.subscribers.client_key == key
    key_alone = write(tmp_path / "key.toml", '[subscribers]\nclient_key = "client.key"\n')
    with pytest.raises(ConfigError, match="client_key and client_key_password need client_cert"):
        load(str(key_alone))
    missing = write(tmp_path / "missing.toml", '[subscribers]\nclient_cert = "nope.crt"\n')
    with pytest.raises(ConfigError, match=r"subscribers\.client_cert: .*nope\.crt is not a file"):
        load(str(missing))


def test_check_config_shows_the_client_certificate(
    client_files: tuple[str, str],
    tmp_path: Path,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert, key = client_files
    both = tmp_path / "both.pem"
    both.write_text(Path(key).read_text() + Path(cert).read_text())
    config = write(tmp_path / "config.toml", f'[subscribers]\nclient_cert = "{both}"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"client certificate (mutual TLS): {both}, key in the same file" in out.splitlines()
    broken = write(
        tmp_path / "broken.toml", f'[subscribers]\nclient_cert = "{cert}"\nclient_key = "{cert}"\n'
    )
    assert main(["check-config", "--config", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "subscribers.client_cert: the certificate and key cannot be loaded" in err


def test_an_encrypted_client_key_needs_its_password(
    client_files: tuple[str, str], tmp_path: Path, clean_env: None
) -> None:
    cert, key = client_files
    private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    base = f'[subscribers]\nclient_cert = "{cert}"\nclient_key = "{encrypted}"\n'
    without = write(tmp_path / "without.toml", base)
    with pytest.raises(ConfigError, match="an encrypted key needs client_key_password"):
        load(str(without))
    with_password = write(tmp_path / "with.toml", base + 'client_key_password = "s3cret"\n')
    settings = load(str(with_password)).settings
    assert settings.subscribers.client_key_password.get_secret_value() == "s3cret"
    SubscriberClient(cert, str(encrypted), "s3cret")  # loads
