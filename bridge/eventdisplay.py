"""`bridge event-display`: a sample subscriber like Knative's event-display.

Answers 200 to every valid CloudEvent (binary, structured or EventBridge envelope) and prints it
to stdout as one JSON line in the structured format, data included; anything else gets a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TextIO

import orjson

from bridge.errors import EventError
from bridge.events import Event, decode_http, json_document
from bridge.http.server import Handler, HTTPServer, Request, Response, json_error


def display_json(event: Event) -> bytes:
    """The event as one structured-mode JSON object, data included."""
    return orjson.dumps(json_document(event))


class EventDisplay(Handler):
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.max_body = 16 * 1024 * 1024

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return json_error(405, f"{request.method} is not allowed; POST a CloudEvent.")
        try:
            events = decode_http(request.headers, request.body)
        except EventError as exc:
            return json_error(exc.status, str(exc))
        for event in events:
            self.out.write(display_json(event).decode("utf-8") + "\n")
        self.out.flush()
        return Response(200)


async def serve(host: str, port: int, out: TextIO = sys.stdout) -> None:
    server = HTTPServer(EventDisplay(out), host, port)
    await server.start()
    print(f"event-display listening on http://{host}:{server.port}/", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.drain(5.0)
