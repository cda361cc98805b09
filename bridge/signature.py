"""EventBridge HTTP push signatures, verified at the ingress (Alibaba's "Signature algorithm").

EventBridge signs each push to an HTTP target over a string-to-sign:

    <url>\\n
    x-eventbridge-signature-timestamp: <ms>\\n
    x-eventbridge-signature-method: HMAC-SHA1\\n      (version 2: x-eventbridge-hash-method: SHA256)
    x-eventbridge-signature-version: 1.0\\n
    x-eventbridge-signature-url: <certificate URL>\\n
    x-eventbridge-signature-token: <token>\\n         (when the target has a token)
    <body>

- Version 1: `x-eventbridge-signature` = Base64(HMAC-SHA1(secret, string-to-sign)), where the
  temporary secret travels in `x-eventbridge-signature-secret`, encrypted with EventBridge's RSA
  private key (PKCS#1 v1.5): the public key recovers it.
- Version 2: `x-eventbridge-signature-v2` = Base64(RSA-SHA256 signature, PKCS#1 v1.5, of the
  string-to-sign) with EventBridge's private key; `x-eventbridge-hash-method: SHA256`.

The documentation and Alibaba's own SDK (the Java `StringToSignBuilder`) differ: the SDK always
writes the token line (empty when there is no token) and ends the string with a newline after
the body; the documentation writes the token line only for a token and no final newline. Both
are accepted: every combination of (token line or not) x (final newline or not) is tried.
The URL is the one EventBridge called: `[ingress.signature] public_url` + the request path (and
query), or, unset, `http://` and `https://` + the Host header + the path.

A request whose timestamp (milliseconds since the epoch, as EventBridge sends it; ten digits are
read as seconds) is more than 60 s away from now, either way, is refused: a signed request cannot
be replayed later. The public key never comes from the network: `public_key` is a PEM file (an
RSA public key or an X.509 certificate, such as the one at the `x-eventbridge-signature-url`),
`public_keys_dir` a folder of `<region>.pem` files, the region read from the certificate URL's
host (`https://cn-hangzhou-eventbridge.oss-accelerate.aliyuncs.com/...`).

Version 1 is only as strong as its secret is secret, and anyone can decrypt it with the public
key: whoever saw one version-1 push can sign others until bridge stops accepting version 1
(`accept_v1 = false`). Version 2 has no such weakness.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bridge.errors import ConfigError

MAX_AGE: Final = 60.0  # seconds, either way

TIMESTAMP: Final = "x-eventbridge-signature-timestamp"
METHOD: Final = "x-eventbridge-signature-method"
HASH_METHOD: Final = "x-eventbridge-hash-method"
VERSION: Final = "x-eventbridge-signature-version"
CERT_URL: Final = "x-eventbridge-signature-url"
TOKEN: Final = "x-eventbridge-signature-token"  # noqa: S105 (a header name)
SECRET: Final = "x-eventbridge-signature-secret"  # noqa: S105 (a header name)
SIGNATURE_V1: Final = "x-eventbridge-signature"
SIGNATURE_V2: Final = "x-eventbridge-signature-v2"

_V1_HEADERS: Final = (TIMESTAMP, METHOD, VERSION, CERT_URL)
_V2_HEADERS: Final = (TIMESTAMP, HASH_METHOD, VERSION, CERT_URL)
_REGION: Final = re.compile(r"([a-z]{2}(?:-[a-z0-9]+)+)-eventbridge\.[a-z0-9.-]*aliyuncs\.com\Z")
_REGION_NAME: Final = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+\Z")


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """An RSA public key from a PEM file: a public key or an X.509 certificate."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}).") from None
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            key = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a PEM public key or certificate ({str(exc).splitlines()[0]})."
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{path}: the key is not an RSA key (EventBridge signs with RSA).")
    return key


@dataclass(frozen=True)
class Keys:
    """EventBridge's public keys: one for every region, and/or one per region."""

    default: rsa.RSAPublicKey | None = None
    by_region: Mapping[str, rsa.RSAPublicKey] = field(default_factory=dict)
    description: str = ""  # where they come from, for check-config

    @classmethod
    def load(cls, public_key: str, public_keys_dir: str, where: str) -> Keys:
        default = load_public_key(Path(public_key)) if public_key else None
        by_region: dict[str, rsa.RSAPublicKey] = {}
        if public_keys_dir:
            folder = Path(public_keys_dir)
            if not folder.is_dir():
                raise ConfigError(f"{where}.public_keys_dir: {folder} is not a folder.")
            for file in sorted(folder.glob("*.pem")):
                if _REGION_NAME.match(file.stem):
                    by_region[file.stem] = load_public_key(file)
            if not by_region:
                raise ConfigError(
                    f"{where}.public_keys_dir: {folder} holds no <region>.pem file "
                    "(such as cn-hangzhou.pem)."
                )
        where_from = [public_key] if public_key else []
        if by_region:
            where_from.append(f"{public_keys_dir} ({', '.join(sorted(by_region))})")
        return cls(default, by_region, " + ".join(where_from))

    def key_for(self, certificate_url: str) -> rsa.RSAPublicKey | str:
        """The key for a push whose certificate URL is `certificate_url`, or why there is none."""
        if self.by_region:
            host = urlsplit(certificate_url).hostname or ""
            match = _REGION.match(host)
            if match is not None and match.group(1) in self.by_region:
                return self.by_region[match.group(1)]
            if self.default is None:
                region = match.group(1) if match else None
                if region is None:
                    return (
                        f"the certificate URL {certificate_url[:200]!r} names no EventBridge "
                        "region."
                    )
                return f"bridge has no public key for the region {region} (no {region}.pem)."
        assert self.default is not None
        return self.default


@dataclass(frozen=True)
class Verifier:
    """Checks EventBridge's signature headers of a request against the configured keys."""

    keys: Keys
    public_url: str = ""
    accept_v1: bool = True
    max_age: float = MAX_AGE

    def check_headers(self, headers: Mapping[str, str], now: float) -> str | None:
        """What can be refused before the body is read: missing headers, a stale timestamp.
        None when the request may go on, else why not (one sentence)."""
        version = 2 if SIGNATURE_V2 in headers else 1
        if version == 1 and SIGNATURE_V1 not in headers:
            return (
                "the request is not signed (no x-eventbridge-signature-v2 or "
                "x-eventbridge-signature header)."
            )
        if version == 1 and not self.accept_v1:
            return "version 1 signatures are not accepted here; sign with version 2."
        needed = _V2_HEADERS if version == 2 else (*_V1_HEADERS, SECRET)
        for name in needed:
            if not headers.get(name):
                return f"the signed request lacks the {name} header."
        return self._check_timestamp(headers[TIMESTAMP], now)

    def _check_timestamp(self, text: str, now: float) -> str | None:
        if not text.isdigit() or len(text) > 16:
            return f"the {TIMESTAMP} header is not a timestamp in milliseconds."
        stamp = int(text) / (1000.0 if len(text) > 11 else 1.0)
        age = now - stamp
        if age > self.max_age:
            return (
                f"the signature is {age:.0f} s old; EventBridge signatures are valid for "
                f"{self.max_age:.0f} s."
            )
        if -age > self.max_age:
            return f"the signature timestamp is {-age:.0f} s in the future."
        return None

    def verify(
        self, headers: Mapping[str, str], path: str, query: str, body: bytes, now: float
    ) -> str | None:
        """None when the request carries a valid, fresh EventBridge signature, else why not."""
        problem = self.check_headers(headers, now)
        if problem is not None:
            return problem
        key = self.keys.key_for(headers[CERT_URL])
        if isinstance(key, str):
            return key
        urls = self._urls(headers, path, query)
        if SIGNATURE_V2 in headers:
            if headers[HASH_METHOD].upper() != "SHA256":
                return f"the hash method {headers[HASH_METHOD][:40]!r} is not supported (SHA256)."
            signature = _base64(headers[SIGNATURE_V2])
            if signature is None:
                return "the x-eventbridge-signature-v2 header is not Base64."
            for candidate in _strings_to_sign(urls, headers, _V2_HEADERS, body):
                try:
                    key.verify(signature, candidate, padding.PKCS1v15(), hashes.SHA256())
                except InvalidSignature:
                    continue
                return None
            return "the x-eventbridge-signature-v2 signature does not match the request."
        if headers[METHOD].upper() != "HMAC-SHA1":
            return f"the signature method {headers[METHOD][:40]!r} is not supported (HMAC-SHA1)."
        encrypted = _base64(headers[SECRET])
        expected = _base64(headers[SIGNATURE_V1])
        if encrypted is None or expected is None:
            return "the signature headers are not Base64."
        try:
            secret = key.recover_data_from_signature(encrypted, padding.PKCS1v15(), None)
        except (InvalidSignature, ValueError):
            return "the x-eventbridge-signature-secret was not encrypted with EventBridge's key."
        for candidate in _strings_to_sign(urls, headers, _V1_HEADERS, body):
            digest = hmac.new(secret, candidate, hashlib.sha1).digest()
            if hmac.compare_digest(digest, expected):
                return None
        return "the x-eventbridge-signature does not match the request."

    def _urls(self, headers: Mapping[str, str], path: str, query: str) -> list[bytes]:
        target = path + ("?" + query if query else "")
        if self.public_url:
            return [(self.public_url.rstrip("/") + target).encode("utf-8")]
        host = headers.get("host", "")
        return [f"{scheme}://{host}{target}".encode("latin-1") for scheme in ("http", "https")]


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _strings_to_sign(
    urls: list[bytes], headers: Mapping[str, str], names: tuple[str, ...], body: bytes
) -> list[bytes]:
    """Every string-to-sign bridge accepts: each URL x (with the token line, without) x (a
    final newline, none). Header values are the bytes received (decoded as latin-1)."""
    fixed = b"\n".join(f"{name}: {headers.get(name, '')}".encode("latin-1") for name in names)
    token = f"\n{TOKEN}: {headers.get(TOKEN, '')}".encode("latin-1")
    out: list[bytes] = []
    for url in urls:
        for lines in (fixed + token, fixed):
            text = url + b"\n" + lines + b"\n" + body
            out += (text, text + b"\n")
    return out
