"""Measure the ingress server against kept libraries: `python -m benchmarks.choices_server`.

The project keeps hand-written protocol code only where the best kept library costs at least 1.5x
its CPU per request on the hot path. This measures that for bridge.http.server, side by side, on
this machine. Every candidate serves the same work in its own process, with one event loop on
uvloop: check the method (405) and the path (404), read the whole body, answer 202 with an empty
body (no RabbitMQ). Candidates:

- bridge.http.server: HTTPServer with a small Handler (method and path in `early`, as the ingress);
- uvicorn, httptools parser, a raw ASGI app (no framework), access log, lifespan, the Server and
  Date headers off;
- uvicorn, h11 parser, otherwise the same (for reference);
- granian, ASGI and RSGI: `--workers 1 --runtime-threads 1 --loop uvloop --http 1`, its default
  runtime mode (auto: multi-threaded scheduler for ASGI, single-threaded for RSGI) and asyncio
  task implementation. granian cannot serve from one process: a supervisor process forks its one
  worker process (the Python loop thread plus the Rust runtime's threads), so its CPU is that of
  the process tree; the supervisor only waits.

Every candidate's CPU is that of its process tree, all threads counted.

Load: wrk, one thread, 32 keep-alive connections, POSTing the 1 KB reference event
(bridge/samples/oss-put-object.json, `Content-Type: application/json`) with
benchmarks/post_file.lua.
Each candidate is warmed up, then measured in alternating rounds (the order rotates each round).
The figure: CPU time of the server's processes (utime + stime from /proc/<pid>/stat, over the
round) divided by the requests served. It prints the medians per candidate and the ratio of CPU
per request to bridge's own server; it asserts that every answer was a 2xx, never a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import Any

from benchmarks.run import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
SAMPLE_PATH = ROOT / "bridge" / "samples" / "oss-put-object.json"
LUA = HERE / "post_file.lua"
CONNECTIONS = 32
TICKS = os.sysconf("SC_CLK_TCK")


# -- the work every candidate serves --


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raw ASGI: 405 unless POST, 404 unless `/`, read the whole body, 202 with no body."""
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        status = 405
    elif scope["path"] != "/":
        status = 404
    else:
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        status = 202 if body else 400
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


async def rsgi_app(scope: Any, protocol: Any) -> None:
    """The same work on granian's RSGI interface."""
    if scope.proto != "http":
        return
    if scope.method != "POST":
        protocol.response_empty(405, [])
    elif scope.path != "/":
        protocol.response_empty(404, [])
    else:
        body = await protocol()
        protocol.response_empty(202 if body else 400, [])


def serve_bridge(port: int) -> None:
    """bridge's own server with a Handler doing the same work, on uvloop (as bridge runs)."""
    import asyncio

    import uvloop

    from bridge.http.server import Handler, HTTPServer, Request, Response

    accepted = Response(202)
    empty = Response(400)

    class Accept(Handler):
        max_body = 1 << 20  # the ingress sets a limit too: the per-chunk check stays on the path

        def early(self, request: Request, content_length: int | None) -> Response | None:
            if request.method != "POST":
                return Response(405, headers=[("allow", "POST")])
            if request.path != "/":
                return Response(404)
            return None

        async def handle(self, request: Request) -> Response:
            return accepted if request.body else empty

    async def main() -> None:
        server = HTTPServer(Accept(), "127.0.0.1", port)
        await server.start()
        await asyncio.Event().wait()

    uvloop.run(main())


# -- candidates --


@dataclass
class Candidate:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)


def candidates(only: set[str] | None) -> list[Candidate]:
    out = []

    def add(name: str, argv: list[str], port: int) -> None:
        if only is None or name in only:
            out.append(Candidate(name, argv, port))

    port = free_port()
    add(
        "bridge.http.server",
        [PY, "-m", "benchmarks.choices_server", "--serve-bridge", str(port)],
        port,
    )
    for parser in ("httptools", "h11"):
        port = free_port()
        add(
            f"uvicorn {parser}",
            [PY, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
             "--http", parser, "--lifespan", "off", "--no-access-log", "--no-server-header",
             "--no-date-header", "--log-level", "warning", "benchmarks.choices_server:asgi_app"],
            port,
        )  # fmt: skip
    for interface in ("asgi", "rsgi"):
        if util.find_spec("granian") is None:
            print("granian is not installed (pip install -e '.[dev]'): its candidates are skipped")
            break
        port = free_port()
        add(
            f"granian {interface}",
            [PY, "-m", "granian", "--interface", interface, "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http",
             "1", "--no-ws", "--backlog", "1024", "--log-level", "warning",
             f"benchmarks.choices_server:{interface}_app"],
            port,
        )  # fmt: skip
    return out


def _post(url: str, body: bytes = b"", method: str = "POST") -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body if method == "POST" else None, method=method,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start(candidate: Candidate, logdir: Path) -> None:
    candidate.log = (logdir / f"{candidate.name.replace(' ', '-')}.log").open("wb")
    candidate.proc = subprocess.Popen(
        candidate.argv, cwd=ROOT, stdout=candidate.log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{candidate.port}"
    deadline = time.monotonic() + 30
    while True:
        if candidate.proc.poll() is not None:
            raise RuntimeError(f"{candidate.name} exited:\n{Path(candidate.log.name).read_text()}")
        try:
            status, body = _post(url + "/", SAMPLE_PATH.read_bytes())
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                log = Path(candidate.log.name).read_text()
                raise RuntimeError(f"{candidate.name} did not answer:\n{log}") from exc
            time.sleep(0.1)
    # The same work: 202 with an empty body, 405 for another method, 404 for another path.
    assert (status, body) == (202, b""), (candidate.name, status, body)
    assert _post(url + "/", method="GET")[0] == 405, candidate.name
    assert _post(url + "/elsewhere", b"{}")[0] == 404, candidate.name


def stop(candidate: Candidate) -> None:
    proc = candidate.proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if candidate.log is not None:
        candidate.log.close()


# -- measuring --


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu(pid: int) -> float:
    """utime + stime (all threads) of `pid` and every live descendant, in seconds."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
    family = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in family and child not in family:
                family.add(child)
                grew = True
    ticks = 0
    for member in family:
        try:
            fields = _stat(member)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / TICKS


def wrk(port: int, seconds: float) -> dict[str, int]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "-s", str(LUA),
         f"http://127.0.0.1:{port}/", "--", str(SAMPLE_PATH)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    found = re.search(r"^wrk-summary (\{.*\})$", out.stdout, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    summary: dict[str, int] = json.loads(found.group(1))
    return summary


def measure(candidate: Candidate, seconds: float) -> tuple[float, float, float]:
    assert candidate.proc is not None
    pid = candidate.proc.pid
    cpu0 = tree_cpu(pid)
    t0 = time.monotonic()
    summary = wrk(candidate.port, seconds)
    wall = time.monotonic() - t0
    cpu = tree_cpu(pid) - cpu0
    # Correctness, not timing: every request answered, all with a 2xx (wrk counts >= 400 in
    # `status`; the 202 itself is checked once at start).
    assert summary["status"] == 0, (candidate.name, summary)
    assert summary["connect"] == summary["read"] == summary["write"] == 0, (candidate.name, summary)
    n = summary["requests"]
    assert n > 0, (candidate.name, summary)
    rps = n / (summary["duration_us"] / 1e6)
    return rps, cpu / n * 1e6, cpu / wall


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="wrk seconds before the rounds")
    parser.add_argument("--only", action="append", help="a candidate name (repeatable)")
    parser.add_argument("--serve-bridge", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bridge is not None:
        serve_bridge(args.serve_bridge)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2

    versions = ", ".join(
        f"{d} {_version(d)}" for d in ("uvicorn", "granian", "httptools", "h11", "uvloop")
    )
    print(f"Python {sys.version.split()[0]}, {versions}; {os.cpu_count()} CPUs")
    print(
        f"wrk -t1 -c{CONNECTIONS} (keep-alive), POST {SAMPLE_PATH.relative_to(ROOT)} "
        f"({SAMPLE_PATH.stat().st_size} bytes); warm-up {args.warmup:g} s, "
        f"{args.rounds} rounds x {args.seconds:g} s, order rotating"
    )
    cands = candidates(set(args.only) if args.only else None)
    with tempfile.TemporaryDirectory(prefix="bridge-choices-server-") as logdir:
        try:
            for c in cands:
                start(c, Path(logdir))
                print(f"  {c.name}: {' '.join(c.argv[1:])}")
            for c in cands:
                wrk(c.port, args.warmup)
            for r in range(args.rounds):
                shift = r % len(cands)
                for c in cands[shift:] + cands[:shift]:
                    rps, cpu_us, busy = measure(c, args.seconds)
                    c.rps.append(rps)
                    c.cpu_us.append(cpu_us)
                    c.busy.append(busy)
                    print(
                        f"  round {r + 1}  {c.name:20} {rps:>9,.0f} req/s "
                        f"{cpu_us:>7.1f} us CPU/req  server CPU {busy:>4.0%}",
                        flush=True,
                    )
        finally:
            for c in cands:
                stop(c)

    base = next((c for c in cands if c.name == "bridge.http.server"), None)
    base_cpu = statistics.median(base.cpu_us) if base else None
    print()
    print(
        f"{'candidate':20} {'req/s':>9} {'CPU us/req':>11} {'x own':>6} {'server CPU':>11} "
        f"{'us/req range':>14}"
    )
    print("-" * 76)
    for c in cands:
        cpu = statistics.median(c.cpu_us)
        ratio = f"{cpu / base_cpu:.2f}" if base_cpu else "-"
        spread = f"{min(c.cpu_us):.1f}-{max(c.cpu_us):.1f}"
        print(
            f"{c.name:20} {statistics.median(c.rps):>9,.0f} {cpu:>11.1f} {ratio:>6} "
            f"{statistics.median(c.busy):>11.0%} {spread:>14}"
        )
    print(
        "\nMedians of the rounds. CPU us/req: utime+stime of the server's processes (all threads)"
        " per request served; x own: that over bridge.http.server's. The machine's cores are"
        " shared with wrk, so req/s partly measures the client: CPU per request is the figure"
        " that decides. server CPU: the server's CPU seconds per wall second (1.0 = one core)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
