"""OpenTelemetry tracing (OTLP). Off by default; W3C trace context is propagated either way."""

from __future__ import annotations

from bridge.config import TracingSettings


class Tracing:
    def __init__(self, settings: TracingSettings) -> None:
        self.settings = settings
        self.enabled = settings.enabled

    def start(self) -> None:
        return None

    def shutdown(self, timeout: float) -> None:
        return None
