"""Per-broker ingress policy: who may post (`auth`) and which senders a broker takes.

`[[ingress.brokers]]` entries, one per broker (Knative's EventPolicy in spirit):

- `auth`: `"token"` (the shared `[ingress] auth_token`, as before), `"signature"` (EventBridge's
  signed push, `bridge.signature`), `"token+signature"` (both), or `"none"`. Unset: `"token"`
  when `auth_token` is set, else `"none"`: a broker without an entry behaves as before.
- `allowed_sources`: the CloudEvents `source`s the broker accepts: exact values, or patterns
  where `*` stands for any run of characters (`acs.*`). An event from any other source is
  refused with 403 and nothing of the request is stored (a batch is all or nothing). Unset:
  every source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from bridge.errors import ConfigError
from bridge.signature import Verifier

AUTH_MODES: Final = ("token", "signature", "token+signature", "none")


@dataclass(frozen=True)
class BrokerPolicy:
    broker: str
    auth: str
    sources: tuple[str, ...] | None = None
    verifier: Verifier | None = None
    _pattern: re.Pattern[str] | None = None

    @property
    def token(self) -> bool:
        return self.auth in ("token", "token+signature")

    @property
    def signature(self) -> bool:
        return self.auth in ("signature", "token+signature")

    def allows(self, source: str) -> bool:
        return self._pattern is None or self._pattern.match(source) is not None

    def describe(self) -> str:
        sources = "any" if self.sources is None else ", ".join(self.sources)
        keys = f" keys={self.verifier.keys.description}" if self.verifier is not None else ""
        return f"auth={self.auth} sources={sources}{keys}"


def source_pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for the allow-list: `*` is any run of characters, everything else literal."""
    parts = (".*".join(re.escape(part) for part in p.split("*")) for p in patterns)
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def build_policy(
    broker: str,
    auth: str | None,
    sources: list[str] | None,
    *,
    token_set: bool,
    verifier: Verifier | None,
    where: str,
) -> BrokerPolicy:
    """One broker's policy, checked against what the ingress has (a token, public keys)."""
    mode = auth if auth is not None else ("token" if token_set else "none")
    if mode not in AUTH_MODES:
        raise ConfigError(f"{where}.auth: {mode!r} is not one of {', '.join(AUTH_MODES)}.")
    if mode in ("token", "token+signature") and not token_set:
        raise ConfigError(f"{where}.auth: {mode} needs [ingress] auth_token to be set.")
    if mode in ("signature", "token+signature") and verifier is None:
        raise ConfigError(
            f"{where}.auth: {mode} needs EventBridge's public key: set [ingress.signature] "
            "public_key or public_keys_dir."
        )
    allowed: tuple[str, ...] | None = None
    if sources is not None:
        if not sources or any(not s for s in sources):
            raise ConfigError(
                f"{where}.allowed_sources: list at least one non-empty source (leave the key "
                "out to accept every source)."
            )
        allowed = tuple(sources)
    return BrokerPolicy(
        broker,
        mode,
        allowed,
        verifier if mode in ("signature", "token+signature") else None,
        source_pattern(allowed) if allowed is not None else None,
    )
