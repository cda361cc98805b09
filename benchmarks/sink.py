"""Counting subscriber for benchmarks (raw ASGI under uvicorn, as cheap as the floor's sink).

POST: counts the delivery and, when it carries `ce-benchsent` (epoch seconds set by the load
generator), records its end-to-end latency. GET /: JSON {count, first, last, latencies: {p50, p99,
n}}. DELETE /: resets everything.
"""

import json
import time

state = {"n": 0, "first": 0.0, "last": 0.0}
latencies: list[float] = []


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    method = scope["method"]
    body = b""
    if method == "POST":
        now = time.time()
        state["last"] = now
        if state["n"] == 0:
            state["first"] = now
        state["n"] += 1
        for name, value in scope["headers"]:
            if name == b"ce-benchsent":
                latencies.append(now - float(value))
                break
    elif method == "DELETE":
        state.update(n=0, first=0.0, last=0.0)
        latencies.clear()
    else:
        body = json.dumps(
            {
                "count": state["n"],
                "first": state["first"],
                "last": state["last"],
                "latency": {
                    "n": len(latencies),
                    "p50": _pct(latencies, 0.5),
                    "p99": _pct(latencies, 0.99),
                },
            }
        ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
