"""The admin listener's endpoints: `/healthz`, `/readyz`, `/metrics` (GET or HEAD only).

One handler for a single daemon (`bridge.app`) and for the supervisor of `--workers N`
(`bridge.supervisor`): each gives where readiness and metrics come from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridge.http.server import Handler, Request, Response, json_error

JSON = [("content-type", "application/json")]

# Why the process is not ready (one sentence), or None when it is.
Readiness = Callable[[], Awaitable[str | None]]
# The metrics exposition and its content type; True asks for OpenMetrics.
Exposition = Callable[[bool], Awaitable[tuple[bytes, str]]]


class Admin(Handler):
    def __init__(self, readiness: Readiness, exposition: Exposition) -> None:
        self._readiness = readiness
        self._exposition = exposition
        self.max_body = 0

    async def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return json_error(405, f"{request.method} is not allowed here; use GET.")
        path = request.path
        if path == "/healthz":
            return Response(200, b'{"status":"ok"}', JSON)
        if path == "/readyz":
            problem = await self._readiness()
            if problem is None:
                return Response(200, b'{"status":"ready"}', JSON)
            return json_error(503, problem)
        if path == "/metrics":
            accept = request.headers.get("accept", "")
            body, content_type = await self._exposition("application/openmetrics-text" in accept)
            return Response(200, body, [("content-type", content_type)])
        return json_error(404, f"no such admin endpoint {path[:100]!r}; try /healthz.")
