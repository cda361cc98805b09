"""EventBridge's signed HTTP pushes, version 1 (HMAC-SHA1 with an RSA-encrypted temporary secret)
and version 2 (RSA-SHA256), verified by the ingress of a broker with `auth = "signature"`.

Keys are generated here. The requests are signed the way Alibaba describes them, independently of
bridge's code: the string-to-sign of the documentation ("Signature algorithm": the token line only
with a token, no newline after the body) and of Alibaba's Java SDK (`StringToSignBuilder`: the
token line always, a newline after the body). A tampered body, header, URL, a stale timestamp or
another key each get 401 and nothing is stored.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from bridge.errors import ConfigError
from bridge.signature import Keys, Verifier
from tests.conftest import trigger
from tests.fakes import routes_for, trigger_spec
from tests.helpers import CATCH_ALL, DEFAULT_PATH, STRUCTURED, UNMATCHED, error_of, start, stored
from tests.helpers import valid_event as helper_event

CERT_URL = "https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/x509_public_certificate_2021012101.pem"
FIXED_V1 = (
    "x-eventbridge-signature-timestamp",
    "x-eventbridge-signature-method",
    "x-eventbridge-signature-version",
    "x-eventbridge-signature-url",
)
FIXED_V2 = (
    "x-eventbridge-signature-timestamp",
    "x-eventbridge-hash-method",
    "x-eventbridge-signature-version",
    "x-eventbridge-signature-url",
)
TOKEN = "x-eventbridge-signature-token"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: rsa.RSAPrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_pem(private: rsa.RSAPrivateKey) -> bytes:
    """A self-signed X.509 certificate, like the one EventBridge publishes."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventbridge test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# --- signing, as EventBridge does ------------------------------------------------------------


def docs_string(url: str, headers: dict[str, str], names: tuple[str, ...], body: bytes) -> bytes:
    """The documentation: url \\n fixed headers (the token one only if set) \\n body."""
    lines = [f"{n}: {headers[n]}" for n in names]
    if TOKEN in headers:
        lines.append(f"{TOKEN}: {headers[TOKEN]}")
    return (url + "\n" + "\n".join(lines) + "\n").encode() + body


def sdk_string(url: str, headers: dict[str, str], names: tuple[str, ...], body: bytes) -> bytes:
    """Alibaba's Java SDK: every header line (the token's too, empty) ends with \\n, and so does
    the body (Apache's BasicHeader prints "name: " for a null value)."""
    lines = "".join(f"{n}: {headers.get(n, '')}\n" for n in (*names, TOKEN))
    return (url + "\n" + lines).encode() + body + b"\n"


def encrypt_with_private_key(private: rsa.RSAPrivateKey, secret: bytes) -> str:
    """Java's Cipher("RSA") with a private key: PKCS#1 v1.5 block type 1, raw RSA."""
    numbers = private.private_numbers()
    n = numbers.public_numbers.n
    size = (n.bit_length() + 7) // 8
    block = b"\x00\x01" + b"\xff" * (size - 3 - len(secret)) + b"\x00" + secret
    value = pow(int.from_bytes(block, "big"), numbers.d, n)
    return base64.b64encode(value.to_bytes(size, "big")).decode()


StringToSign = Callable[[str, dict[str, str], tuple[str, ...], bytes], bytes]


def sign_v1(
    private: rsa.RSAPrivateKey,
    url: str,
    body: bytes,
    *,
    form: StringToSign = docs_string,
    token: str | None = None,
    stamp: float | None = None,
) -> dict[str, str]:
    headers = {
        "x-eventbridge-signature-timestamp": str(int((stamp or time.time()) * 1000)),
        "x-eventbridge-signature-method": "HMAC-SHA1",
        "x-eventbridge-signature-version": "1.0",
        "x-eventbridge-signature-url": CERT_URL,
    }
    if token is not None:
        headers[TOKEN] = token
    secret = b"tmp-secret-0123456789abcdef"
    headers["x-eventbridge-signature-secret"] = encrypt_with_private_key(private, secret)
    digest = hmac.new(secret, form(url, headers, FIXED_V1, body), hashlib.sha1).digest()
    headers["x-eventbridge-signature"] = base64.b64encode(digest).decode()
    return headers


def sign_v2(
    private: rsa.RSAPrivateKey,
    url: str,
    body: bytes,
    *,
    form: StringToSign = docs_string,
    token: str | None = None,
    stamp: float | None = None,
    cert_url: str = CERT_URL,
) -> dict[str, str]:
    headers = {
        "x-eventbridge-signature-timestamp": str(int((stamp or time.time()) * 1000)),
        "x-eventbridge-hash-method": "SHA256",
        "x-eventbridge-signature-version": "1.0",
        "x-eventbridge-signature-url": cert_url,
    }
    if token is not None:
        headers[TOKEN] = token
    signature = private.sign(
        form(url, headers, FIXED_V2, body), padding.PKCS1v15(), hashes.SHA256()
    )
    headers["x-eventbridge-signature-v2"] = base64.b64encode(signature).decode()
    return headers


# --- the verifier, without a server ----------------------------------------------------------

BODY = b'{"specversion":"1.0","id":"1","source":"acs.oss","type":"t"}'
HOST = "bridge.example:8080"
URL = f"http://{HOST}/default/eventbridge-default-broker"


def verifier(private: rsa.RSAPrivateKey, tmp_path: Path, **options: Any) -> Verifier:
    path = tmp_path / "eventbridge.pem"
    path.write_bytes(public_pem(private))
    return Verifier(Keys.load(str(path), "", "test"), **options)


def check(v: Verifier, headers: dict[str, str], body: bytes = BODY, **where: str) -> str | None:
    request = {"host": HOST, **headers}
    path, _, query = where.get("target", "/default/eventbridge-default-broker").partition("?")
    return v.verify(request, path, query, body, time.time())


SIGNERS = {"v1": sign_v1, "v2": sign_v2}
FORMS = {"documentation": docs_string, "sdk": sdk_string}


@pytest.mark.parametrize("version", SIGNERS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("token", [None, "my-token"])
def test_both_strings_to_sign_are_accepted(
    key: rsa.RSAPrivateKey, tmp_path: Path, version: str, form: str, token: str | None
) -> None:
    v = verifier(key, tmp_path)
    headers = SIGNERS[version](key, URL, BODY, form=FORMS[form], token=token)
    assert check(v, headers) is None


@pytest.mark.parametrize("version", SIGNERS)
def test_tampering_is_refused(key: rsa.RSAPrivateKey, tmp_path: Path, version: str) -> None:
    v = verifier(key, tmp_path)
    sign = SIGNERS[version]
    headers = sign(key, URL, BODY, token="t")
    assert check(v, headers) is None
    assert "does not match" in str(check(v, headers, BODY.replace(b'"1"', b'"2"')))
    assert "does not match" in str(check(v, headers, BODY + b" "))
    assert "does not match" in str(check(v, {**headers, TOKEN: "other"}))
    forged = {**headers, "x-eventbridge-signature-timestamp": str(int(time.time() * 1000) + 1)}
    assert "does not match" in str(check(v, forged))
    other_url = {**headers, "x-eventbridge-signature-url": CERT_URL.replace("2021", "2022")}
    assert "does not match" in str(check(v, other_url))
    assert "does not match" in str(check(v, headers, target="/default/other"))


@pytest.mark.parametrize("version", SIGNERS)
def test_stale_and_future_timestamps_are_refused(
    key: rsa.RSAPrivateKey, tmp_path: Path, version: str
) -> None:
    v = verifier(key, tmp_path)
    sign = SIGNERS[version]
    assert check(v, sign(key, URL, BODY, stamp=time.time() - 55)) is None
    assert "s old; EventBridge signatures are valid for 60 s" in str(
        check(v, sign(key, URL, BODY, stamp=time.time() - 61))
    )
    assert "in the future" in str(check(v, sign(key, URL, BODY, stamp=time.time() + 61)))
    bad = {**sign(key, URL, BODY), "x-eventbridge-signature-timestamp": "yesterday"}
    assert "not a timestamp" in str(check(v, bad))


@pytest.mark.parametrize("version", SIGNERS)
def test_another_key_is_refused(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, tmp_path: Path, version: str
) -> None:
    v = verifier(key, tmp_path)
    problem = check(v, SIGNERS[version](other_key, URL, BODY))
    assert problem is not None
    assert "does not match" in problem or "was not encrypted with EventBridge's key" in problem


def test_the_url_with_query_https_and_public_url(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    v = verifier(key, tmp_path)
    target = "/default/eventbridge-default-broker?from=eb"
    assert check(v, sign_v2(key, f"http://{HOST}{target}", BODY), target=target) is None
    assert (
        check(v, sign_v2(key, f"https://{HOST}/default/eventbridge-default-broker", BODY)) is None
    )
    assert check(v, sign_v2(key, URL, BODY), target=target) is not None  # the query is signed
    proxied = verifier(key, tmp_path, public_url="https://events.example.com/eb")
    signed = sign_v2(key, "https://events.example.com/eb/default/eventbridge-default-broker", BODY)
    assert check(proxied, signed) is None
    assert check(proxied, sign_v2(key, URL, BODY)) is not None


def test_missing_headers_and_versions(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    v = verifier(key, tmp_path)
    assert "not signed" in str(check(v, {}))
    headers = sign_v2(key, URL, BODY)
    del headers["x-eventbridge-signature-url"]
    assert "lacks the x-eventbridge-signature-url header" in str(check(v, headers))
    v1_only_off = verifier(key, tmp_path, accept_v1=False)
    assert "version 1 signatures are not accepted" in str(
        check(v1_only_off, sign_v1(key, URL, BODY))
    )
    assert check(v1_only_off, sign_v2(key, URL, BODY)) is None
    sha1 = {**sign_v2(key, URL, BODY), "x-eventbridge-hash-method": "SHA1"}
    assert "not supported (SHA256)" in str(check(v, sha1))
    garbage = {**sign_v2(key, URL, BODY), "x-eventbridge-signature-v2": "%%%"}
    assert "not Base64" in str(check(v, garbage))


def test_keys_by_region_and_certificates(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "cn-hangzhou.pem").write_bytes(certificate_pem(key))
    (folder / "cn-beijing.pem").write_bytes(public_pem(other_key))
    v = Verifier(Keys.load("", str(folder), "test"))
    assert sorted(v.keys.by_region) == ["cn-beijing", "cn-hangzhou"]
    assert check(v, sign_v2(key, URL, BODY)) is None
    beijing = CERT_URL.replace("cn-hangzhou", "cn-beijing")
    assert check(v, sign_v2(other_key, URL, BODY, cert_url=beijing)) is None
    assert check(v, sign_v2(key, URL, BODY, cert_url=beijing)) is not None  # the wrong region's key
    shanghai = CERT_URL.replace("cn-hangzhou", "cn-shanghai")
    assert "no public key for the region cn-shanghai" in str(
        check(v, sign_v2(key, URL, BODY, cert_url=shanghai))
    )
    assert "names no EventBridge region" in str(
        check(v, sign_v2(key, URL, BODY, cert_url="https://evil.example/cert.pem"))
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key", "not a PEM public key or certificate"),
        (
            b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
            b"-----END PUBLIC KEY-----\n",
            "not an RSA key",
        ),
    ],
)
def test_a_wrong_key_file_is_a_config_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        Keys.load(str(path), "", "test")


def test_signature_auth_needs_a_key(tmp_path: Path) -> None:
    policy = {"brokers": [{"broker": "default/eventbridge-default-broker", "auth": "signature"}]}
    with pytest.raises(
        ConfigError, match=r"needs EventBridge's public key: set \[ingress.signature\]"
    ):
        routes_for(trigger_spec(), ingress=policy)
    with pytest.raises(ConfigError, match=r"public_keys_dir: .* is not a folder"):
        routes_for(
            trigger_spec(),
            ingress={**policy, "signature": {"public_keys_dir": str(tmp_path / "none")}},
        )


# --- the ingress: 401, nothing stored -------------------------------------------------------


def valid_event() -> bytes:
    return orjson.dumps(helper_event())


async def signed_bridge(
    bridge_factory: Any, key: rsa.RSAPrivateKey, tmp_path: Path, auth: str, **ingress: Any
) -> Any:
    path = tmp_path / "eventbridge.pem"
    path.write_bytes(certificate_pem(key))
    return await start(
        bridge_factory,
        ingress={
            "signature": {"public_key": str(path)},
            "brokers": [{"broker": "default/eventbridge-default-broker", "auth": auth}],
            **ingress,
        },
    )


def url_of(running: Any, path: str = DEFAULT_PATH) -> str:
    return running.url.rstrip("/") + path


async def test_signed_pushes_are_stored_and_bad_ones_refused(
    bridge_factory, amqp, key, other_key, tmp_path
):
    running = await signed_bridge(bridge_factory, key, tmp_path, "signature")
    body = valid_event()
    url = url_of(running)
    accepted = [
        sign_v1(key, url, body),
        sign_v1(key, url, body, form=sdk_string),
        sign_v2(key, url, body),
        sign_v2(key, url, body, form=sdk_string, token="tok"),
        sign_v2(key, url_of(running, "/"), body),  # the default broker's other path
    ]
    for index, headers in enumerate(accepted):
        path = "/" if index == len(accepted) - 1 else DEFAULT_PATH
        status, _, answer = await running.post(
            path, body=body, headers={"content-type": STRUCTURED, **headers}
        )
        assert status == 202, (index, answer)
    assert await stored(amqp, CATCH_ALL) == len(accepted)

    good = sign_v2(key, url, body)
    refused = {
        "unsigned": ({}, body),
        "tampered body": (good, body.replace(b'"test"', b'"evil"')),
        "tampered header": ({**good, "x-eventbridge-signature-version": "2.0"}, body),
        "stale": (sign_v2(key, url, body, stamp=time.time() - 120), body),
        "wrong key v2": (sign_v2(other_key, url, body), body),
        "wrong key v1": (sign_v1(other_key, url, body), body),
        "tampered v1": (sign_v1(key, url, body), body.replace(b'"t"', b'"u"')),
    }
    assert refused["tampered body"][1] != body
    assert refused["tampered v1"][1] != body
    for what, (headers, payload) in refused.items():
        status, answer_headers, answer = await running.post(
            DEFAULT_PATH, body=payload, headers={"content-type": STRUCTURED, **headers}
        )
        assert status == 401, what
        assert answer_headers["www-authenticate"] == "EventBridge-Signature"
        assert error_of(answer), what
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == len(accepted)  # nothing more


async def test_token_and_signature(bridge_factory, amqp, key, tmp_path):
    running = await signed_bridge(
        bridge_factory, key, tmp_path, "token+signature", auth_token="s3cret"
    )
    body = valid_event()
    url = url_of(running)
    ok = sign_v2(key, url, body, token="s3cret")
    status, _, answer = await running.post(
        DEFAULT_PATH, body=body, headers={"content-type": STRUCTURED, **ok}
    )
    assert status == 202, answer
    # Signed, but with another token: the token check refuses it (before the body is read).
    wrong = sign_v2(key, url, body, token="guess")
    status, headers, answer = await running.post(
        DEFAULT_PATH, body=body, headers={"content-type": STRUCTURED, **wrong}
    )
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert "token" in error_of(answer)
    # The right token, unsigned.
    status, _, answer = await running.post(
        DEFAULT_PATH, body=body, headers={"content-type": STRUCTURED, TOKEN: "s3cret"}
    )
    assert status == 401
    assert "not signed" in error_of(answer)
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 1


async def test_a_broker_without_a_policy_keeps_the_token_rule(bridge_factory, amqp, key, tmp_path):
    path = tmp_path / "eventbridge.pem"
    path.write_bytes(public_pem(key))
    running = await start(
        bridge_factory,
        triggers=[
            trigger("catch-all", "http://127.0.0.1:9/"),
            trigger("open", "http://127.0.0.1:9/", broker="open"),
        ],
        ingress={
            "auth_token": "s3cret",
            "signature": {"public_key": str(path)},
            "brokers": [{"broker": "default/open", "auth": "none"}],
        },
    )
    body = valid_event()
    status, _, _ = await running.post(DEFAULT_PATH, body=body, headers={"content-type": STRUCTURED})
    assert status == 401  # no entry: the token, as before
    status, _, answer = await running.post(
        "/default/open", body=body, headers={"content-type": STRUCTURED}
    )
    assert status == 202, answer  # auth = "none"
    assert await stored(amqp, CATCH_ALL, UNMATCHED) == 0
