"""A do-nothing OTLP/HTTP receiver for benchmarks: answers 200 to every export request."""


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/x-protobuf"), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})
