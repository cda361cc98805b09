"""Archive and replay (what `bridge archive list|replay` do), with no printing.

Each archived broker has a RabbitMQ stream, `bridge.archive.<ns>.<broker>`, that the Declarer
(`bridge.amqp.topology`) declares and binds to the broker's exchanges: RabbitMQ appends every
event the broker accepts, as stored (attributes, data, and `bridge-received`, the ingress time
in epoch milliseconds), with no publish from bridge.

A replay reads the stream from a timestamp (`x-stream-offset`). RabbitMQ resolves it to the
second, starts at a chunk boundary and stamps chunks with its own clock, so reading starts
CLOCK_MARGIN_S before `since`, and the window is applied exactly, on `bridge-received`:
since <= received < until. Reading stops at the stream's end as it was when the replay started
(or at the first event received STOP_SLACK_MS after `until`). Each event kept is republished,
confirmed and mandatory, through `bridge.retry` to the queue of one trigger (`trigger`) or of
every trigger of the broker whose filter matches it now: never through the broker's exchange, so
a replayed event is not archived again (AWS EventBridge does not archive replayed events either).
Each copy carries the extension `bridgereplay` = the replay id, and `bridge-received` = the time
it was replayed.

Progress lives in RabbitMQ: the queue `bridge.replay.<id>` holds one record (max-length 1,
drop-head: the newest wins), written once a batch of publishes is confirmed: the offset to go on
from and the counts. `resume` goes on from there, so after a crash (Ctrl-C, kill -9) only the
last batch not yet recorded is sent again. A publish refused, returned or not confirmed stops the
replay at that event: the record keeps its offset, and `resume` starts again with it. While a
replay runs its process holds the exclusive queue `bridge.replay.<id>.lock`, so one replay never
runs twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import orjson

from bridge import names
from bridge.amqp import wire
from bridge.amqp.browse import queue_depth
from bridge.amqp.connection import AMQP_ERRORS, delivery_tag
from bridge.amqp.topology import ArchiveStream, QueueKind, queue_arguments, stream_max_age
from bridge.config import LoadedConfig
from bridge.errors import BridgeError, ConfigError
from bridge.filters.view import EventView
from bridge.records import iso, replay_headers
from bridge.triggers import Routes, Trigger, build_routes

REPLAY_EXTENSION = "ce-bridgereplay"
OFFSET_HEADER = "x-stream-offset"
BATCH = 100  # events whose publishes are confirmed together, then recorded
PROGRESS_INTERVAL = 1.0  # seconds: a slower batch is recorded anyway
CLOCK_MARGIN_S = 60  # read from this long before `since` (clocks and chunk boundaries)
STOP_SLACK_MS = 10_000  # an event received this long after `until` ends the reading
TAIL_SLACK_MS = 1_000  # the same, for events appended after the replay started
TAIL_IDLE = 0.3  # seconds without a message, past the end seen at the start: the end
EMPTY_WAIT = 1.0  # seconds to wait for the first message of a stream before calling it empty
TAIL_PROBE = 0.5  # seconds spent reading the last chunk of the stream
STALL_TIMEOUT = 30.0  # seconds without a message before the end: RabbitMQ stopped sending
FIRST_WAIT = 3.0  # seconds without any message from a timestamp: nothing was appended since
RECORD_WAIT = 2.0  # seconds to wait for the progress record of a replay whose queue exists
RECORD_IDLE = 0.05  # then this long for a second record (written while the first was read)
PUBLISH_TIMEOUT = 10.0
PREFETCH = 500
RECORD_EXPIRES_MS = 7 * 86_400_000  # a replay's record is deleted 7 days after its last use
_REPLAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")

Progress = Callable[[int, int], None]  # (offsets read, offsets to read)


# --- configuration -------------------------------------------------------------------------------


def archive_streams(loaded: LoadedConfig, routes: Routes) -> list[ArchiveStream]:
    """The configured archives; an enabled one must archive a broker that exists."""
    streams = []
    for index, spec in enumerate(loaded.settings.archives):
        if spec.enabled and spec.broker not in routes.by_broker:
            raise ConfigError(
                f"{loaded.source}: archives[{index}].broker: no trigger names the broker "
                f"{spec.broker} and it is not the default broker."
            )
        streams.append(
            ArchiveStream(
                broker=spec.broker,
                enabled=spec.enabled,
                max_age_s=int(spec.max_age.total_seconds()),
                max_bytes=spec.max_bytes,
                segment_bytes=spec.segment_bytes,
            )
        )
    return streams


def parse_time(text: str, now: float, option: str) -> int:
    """Epoch milliseconds (rounded up) of `text`: an RFC 3339 time (UTC when it has no offset),
    `now`, or an ISO-8601 duration before now (`PT2H`, `P1D`)."""
    value = text.strip()
    if value.lower() == "now":
        return _ms(datetime.fromtimestamp(now, UTC))
    if value[:1] in ("P", "p"):
        from pydantic import TypeAdapter, ValidationError

        try:
            ago = TypeAdapter(timedelta).validate_python(value.upper())
        except ValidationError:
            ago = None
        if ago is not None and ago >= timedelta(0):
            return _ms(datetime.fromtimestamp(now, UTC) - ago)
    else:
        with contextlib.suppress(ValueError):
            stamp = datetime.fromisoformat(value)
            return _ms(stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC))
    raise ConfigError(
        f"{option}: {text!r} is not a time; use RFC 3339 (2026-11-26T18:00:00Z), now, or a "
        "duration before now (PT2H)."
    )


def _ms(stamp: datetime) -> int:
    micro = (stamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return -(-micro // 1000)


def parse_rate(text: str) -> float:
    """`--rate`: events per second, written `100/s` or `100`."""
    value = text.strip().removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        rate = 0.0
    if not rate > 0 or rate == float("inf"):
        raise ConfigError(f"--rate: {text!r} is not a rate; use events per second such as 100/s.")
    return rate


def check_replay_id(replay_id: str) -> str:
    if not _REPLAY_ID.match(replay_id):
        raise ConfigError(f"--resume: {replay_id!r} is not a replay id.")
    return replay_id


def new_replay_id(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(3)


# --- reading a stream ----------------------------------------------------------------------------


class StreamReader:
    """The messages of a stream from `offset` (`first`, `last`, an offset or a datetime), in
    order. They are acknowledged as they are read: on a stream that only gives credit back."""

    def __init__(
        self,
        connection: wire.Connection,
        stream: str,
        offset: str | int | datetime,
        prefetch: int = PREFETCH,
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.offset = offset
        self.prefetch = prefetch
        self.inbox: asyncio.Queue[wire.Message] = asyncio.Queue()
        self.channel: wire.Channel | None = None
        self._unacked = 0

    async def __aenter__(self) -> StreamReader:
        self.channel = await self.connection.channel()
        await self.channel.basic_qos(prefetch_count=self.prefetch)
        await self.channel.basic_consume(
            self.stream, self.inbox.put_nowait, arguments={OFFSET_HEADER: self.offset}
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.channel is not None and not self.channel.is_closed:
            with contextlib.suppress(*AMQP_ERRORS):
                await self.channel.close()

    async def next(self, timeout: float) -> wire.Message | None:
        """The next message, or None when none came within `timeout` seconds."""
        try:
            message = await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None
        self._unacked += 1
        if self._unacked >= self.prefetch // 4 and self.channel is not None:
            self.channel.basic_ack(delivery_tag(message), multiple=True)
            self._unacked = 0
        return message


def headers_of(message: wire.Message) -> dict[str, Any]:
    return dict(message.headers)


def offset_of(message: wire.Message) -> int:
    return int(str(headers_of(message).get(OFFSET_HEADER)))


def received_of(headers: dict[str, Any]) -> int | None:
    value = headers.get(names.RECEIVED)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def first_message(connection: wire.Connection, stream: str) -> wire.Message | None:
    async with StreamReader(connection, stream, "first", prefetch=1) as reader:
        return await reader.next(EMPTY_WAIT)


async def last_messages(connection: wire.Connection, stream: str) -> list[wire.Message]:
    """The messages of the stream's last chunk (and whatever is appended meanwhile); the last
    one is the end of the stream as it is now. Empty when the stream is."""
    loop = asyncio.get_running_loop()
    async with StreamReader(connection, stream, "last") as reader:
        message = await reader.next(EMPTY_WAIT)
        if message is None:
            return []
        found = [message]
        deadline = loop.time() + TAIL_PROBE
        while (left := deadline - loop.time()) > 0:
            message = await reader.next(min(TAIL_IDLE, left))
            if message is None:
                break
            found.append(message)
        return found


def _size(message: wire.Message) -> int:
    headers = {k: v for k, v in headers_of(message).items() if k != OFFSET_HEADER}
    return len(message.body) + len(orjson.dumps(headers, default=str))


# --- list ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ArchiveInfo:
    """One row of `bridge archive list`."""

    broker: str
    stream: str
    enabled: bool
    exists: bool
    messages: int = 0
    bytes: int = 0  # estimated: messages x the mean size of the first and last ones
    first_offset: int | None = None
    last_offset: int | None = None
    first: str | None = None  # receive time of the oldest event kept (RFC 3339)
    last: str | None = None  # receive time of the newest
    max_age: str | None = None  # RabbitMQ's x-max-age; None: no age limit
    max_bytes: int | None = None
    segment_bytes: int | None = None

    @property
    def retention(self) -> str:
        return retention(self.max_age, self.max_bytes, self.segment_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_estimated": True}


def retention(max_age: str | None, max_bytes: int | None, segment_bytes: int | None) -> str:
    """A stream's retention as `archive list` and `check-config` show it (`max_age` is the
    `x-max-age` RabbitMQ gets; None: no limit)."""
    parts = [f"max_age={max_age or 'none'}", f"max_bytes={max_bytes or 'none'}"]
    if segment_bytes:
        parts.append(f"segment_bytes={segment_bytes}")
    return " ".join(parts)


def describe_configured(archive: ArchiveStream) -> str:
    """`check-config`'s line for a configured archive: its stream and retention, or disabled."""
    if not archive.enabled:
        return f"archive {archive.broker}: disabled (an existing stream is kept, not written)"
    age = stream_max_age(archive.max_age_s) if archive.max_age_s else None
    kept = retention(age, archive.max_bytes, archive.segment_bytes)
    return f"archive {archive.broker}: stream {archive.stream}, {kept}"


async def describe_archive(connection: wire.Connection, archive: ArchiveStream) -> ArchiveInfo:
    info = ArchiveInfo(
        broker=archive.broker,
        stream=archive.stream,
        enabled=archive.enabled,
        exists=False,
        max_age=stream_max_age(archive.max_age_s) if archive.max_age_s else None,
        max_bytes=archive.max_bytes or None,
        segment_bytes=archive.segment_bytes,
    )
    if await queue_depth(connection, archive.stream) is None:
        return info
    info.exists = True
    first = await first_message(connection, archive.stream)
    tail = await last_messages(connection, archive.stream)
    if first is None or not tail:
        return info
    last = tail[-1]
    info.first_offset, info.last_offset = offset_of(first), offset_of(last)
    info.messages = info.last_offset - info.first_offset + 1
    sample = [first, *tail]
    info.bytes = round(sum(_size(m) for m in sample) / len(sample) * info.messages)
    first_received, last_received = received_of(headers_of(first)), received_of(headers_of(last))
    info.first = iso(first_received / 1000) if first_received is not None else None
    info.last = iso(last_received / 1000) if last_received is not None else None
    return info


# --- replay --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayRequest:
    """What to replay: the events of `broker` received in [since_ms, until_ms)."""

    broker: str
    since_ms: int
    until_ms: int
    trigger: str | None = None  # namespace/name: only this trigger's queue
    event_type: str | None = None
    source: str | None = None


@dataclass(slots=True)
class ReplayResult:
    """What a replay did (with dry_run, what it would do); also its progress record."""

    id: str
    request: ReplayRequest
    dry_run: bool = False
    replayed: int = 0  # events sent, every publish confirmed (all runs of this replay)
    deliveries: int = 0  # publishes confirmed: one per trigger an event went to
    skipped: int = 0  # in the window, but not of --type/--source or matching no trigger
    failed: int = 0  # events whose publish was refused, returned or not confirmed (this run)
    state: str = "running"  # running, done, failed
    next_offset: int | None = None  # where to go on from; None: from `since`
    resumed: bool = False
    already_complete: bool = False  # resumed, but it had finished before
    started: str = ""
    updated: str = ""
    seq: int = 0  # records of one replay, numbered: the highest is the one that counts

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        for transient in ("dry_run", "resumed", "already_complete"):
            record.pop(transient)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ReplayResult:
        fields = dict(record)
        fields["request"] = ReplayRequest(**fields["request"])
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        request = out.pop("request")
        out.update(
            broker=request["broker"],
            trigger=request["trigger"],
            type=request["event_type"],
            source=request["source"],
            since=iso(request["since_ms"] / 1000),
            until=iso(request["until_ms"] / 1000),
        )
        return out


@dataclass(slots=True)
class _Item:
    """An event read in the window: its offset and its publishes (none: skipped)."""

    offset: int
    publishes: list[asyncio.Future[None]] = field(default_factory=list)


class Archives:
    """The operations, on one connection to RabbitMQ, for the loaded configuration."""

    def __init__(self, connection: wire.Connection, loaded: LoadedConfig) -> None:
        self.connection = connection
        self.routes = build_routes(loaded)
        self.archives = archive_streams(loaded, self.routes)
        rabbitmq = loaded.settings.rabbitmq
        self.queue_type = QueueKind(rabbitmq.queue_type, rabbitmq.quorum_initial_group_size)

    async def list_archives(self) -> list[ArchiveInfo]:
        return [await describe_archive(self.connection, a) for a in self.archives]

    def request(
        self,
        since_ms: int,
        until_ms: int | None = None,
        *,
        broker: str | None = None,
        trigger: str | None = None,
        event_type: str | None = None,
        source: str | None = None,
        now: float | None = None,
    ) -> ReplayRequest:
        """A checked request: `until` (default now) is never later than now; with `trigger`,
        the broker is the trigger's."""
        now_ms = int((time.time() if now is None else now) * 1000)
        until = now_ms if until_ms is None else min(until_ms, now_ms)
        if since_ms >= until:
            raise ConfigError("--since must be earlier than --until (and than now).")
        if trigger is not None:
            found = self.routes.trigger(trigger)
            if found is None:
                raise ConfigError(f"--trigger: {trigger} is not a configured trigger.")
            if broker is not None and broker != found.broker_key:
                raise ConfigError(
                    f"--broker: the trigger {trigger} belongs to the broker {found.broker_key}, "
                    f"not {broker}."
                )
            broker = found.broker_key
        return ReplayRequest(
            broker=broker or self.routes.default_broker,
            since_ms=since_ms,
            until_ms=until,
            trigger=trigger,
            event_type=event_type,
            source=source,
        )

    async def replay(
        self,
        request: ReplayRequest,
        *,
        rate: float | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
        batch: int = BATCH,
        replay_id: str | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> ReplayResult:
        """Replay the events of `request` (see the module docstring). `on_start(id)` is called
        once the replay's first progress record is stored (so it can be resumed)."""
        now = time.time()
        result = ReplayResult(
            id=replay_id or new_replay_id(now),
            request=request,
            dry_run=dry_run,
            started=iso(now),
        )
        return await self._go(result, None, rate, progress, batch, on_start)

    async def resume(
        self,
        replay_id: str,
        *,
        rate: float | None = None,
        progress: Progress | None = None,
        batch: int = BATCH,
        on_start: Callable[[str], None] | None = None,
    ) -> ReplayResult:
        """Go on with an interrupted or failed replay from its last record."""
        check_replay_id(replay_id)
        record = await self.read_record(replay_id)
        if record is None:
            raise BridgeError(
                f"no replay has the id {replay_id} in RabbitMQ (a record is deleted 7 days "
                "after its replay last ran)."
            )
        try:
            result = ReplayResult.from_record(record)
        except (TypeError, KeyError):
            raise BridgeError(f"the progress record of replay {replay_id} is unreadable.") from None
        result.resumed = True
        result.failed = 0
        if result.state == "done":
            result.already_complete = True
            return result
        trigger = result.request.trigger
        if trigger is not None and self.routes.trigger(trigger) is None:
            raise ConfigError(f"replay {replay_id} is for the trigger {trigger}, not configured.")
        return await self._go(result, result.next_offset, rate, progress, batch, on_start)

    async def read_record(self, replay_id: str) -> dict[str, Any] | None:
        """The replay's newest progress record (None when there is none).

        The queue keeps one record, but a record being read is not ready, so one written
        meanwhile can sit beside it until the next write drops the older: every record present
        is read (none acknowledged, so all stay) and the highest `seq` wins. Not by the queue's
        depth, which does not count a record still on its way back from another reader.
        """
        queue = names.replay_progress(replay_id)
        if await queue_depth(self.connection, queue) is None:
            return None
        newest: dict[str, Any] | None = None
        inbox: asyncio.Queue[wire.Message] = asyncio.Queue()
        channel = await self.connection.channel()
        try:
            await channel.basic_qos(prefetch_count=0)  # every record at once
            await channel.basic_consume(queue, inbox.put_nowait)
            wait = RECORD_WAIT
            while True:
                try:
                    message = await asyncio.wait_for(inbox.get(), wait)
                except TimeoutError:
                    break
                wait = RECORD_IDLE
                with contextlib.suppress(ValueError, TypeError):
                    record = orjson.loads(message.body)
                    if newest is None or int(record["seq"]) >= int(newest["seq"]):
                        newest = record
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*AMQP_ERRORS):
                    await channel.close()
        return newest

    # -- the run --
    async def _go(
        self,
        result: ReplayResult,
        start: int | None,
        rate: float | None,
        progress: Progress | None,
        batch: int,
        on_start: Callable[[str], None] | None,
    ) -> ReplayResult:
        stream = names.archive_stream(result.request.broker)
        if await queue_depth(self.connection, stream) is None:
            raise BridgeError(
                f"the broker {result.request.broker} has no archive ({stream} does not exist "
                "in RabbitMQ)."
            )
        if result.dry_run:
            await _Run(self, result, None).read(stream, start, None, progress, batch)
            return result
        publisher = await self.connection.channel(publisher_confirms=True)
        try:
            await self._lock(result.id)
            await publisher.queue_declare(
                names.replay_progress(result.id),
                durable=True,
                arguments=queue_arguments(
                    self.queue_type,
                    max_length=1,
                    overflow="drop-head",
                    expires_ms=RECORD_EXPIRES_MS,
                ),
            )
            run = _Run(self, result, publisher)
            result.state = "running"
            await run.save()
            if on_start is not None:
                on_start(result.id)
            await run.read(stream, start, rate, progress, batch)
        finally:
            if not publisher.is_closed:
                with contextlib.suppress(*AMQP_ERRORS):
                    await publisher.queue_delete(names.replay_lock(result.id))
                    await publisher.close()
        return result

    async def _lock(self, replay_id: str) -> None:
        lock = await self.connection.channel()
        try:
            await lock.queue_declare(names.replay_lock(replay_id), exclusive=True)
        except wire.ResourceLocked:
            raise BridgeError(f"replay {replay_id} is running in another process.") from None
        finally:
            if not lock.is_closed:
                await lock.close()

    def targets(
        self,
        request: ReplayRequest,
        attrs: dict[str, Any],
        body: bytes = b"",
        content_type: str | None = None,
    ) -> list[str]:
        """The queues an event goes to: the trigger's, or those of the broker's matching
        triggers; none when --type or --source rule it out. Filters that read the event's data
        (content patterns) see it through one `EventView`, parsed at most once."""
        if request.event_type is not None and attrs.get("ce-type") != request.event_type:
            return []
        if request.source is not None and attrs.get("ce-source") != request.source:
            return []
        view = EventView(attrs, body, content_type)
        if request.trigger is not None:
            trigger = self.routes.trigger(request.trigger)
            if trigger is None:
                return []
            return [trigger.queue] if trigger.filter.predicate(_seen(trigger, attrs, view)) else []
        triggers = self.routes.by_broker.get(request.broker, ())
        return [t.queue for t in triggers if t.filter.predicate(_seen(t, attrs, view))]


def _seen(trigger: Trigger, attrs: dict[str, Any], view: EventView) -> Mapping[str, object]:
    """What a trigger's filter reads: the headers, or the view when it looks into the data."""
    return view if trigger.filter.needs_data else attrs


class _Rate:
    """Spaces sends `1/rate` seconds apart (no limit without a rate)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next > now:
            await asyncio.sleep(self.next - now)
        self.next = max(self.next, now) + self.interval


class _Run:
    """One run of a replay: read, publish, record."""

    def __init__(
        self, archives: Archives, result: ReplayResult, publisher: wire.Channel | None
    ) -> None:
        self.archives = archives
        self.result = result
        self.publisher = publisher
        self.pending: list[_Item] = []

    async def read(
        self,
        stream: str,
        start: int | None,
        rate: float | None,
        progress: Progress | None,
        batch: int,
    ) -> None:
        request = self.result.request
        tail = await last_messages(self.archives.connection, stream)
        if not tail:
            await self.finish(None)
            return
        end = offset_of(tail[-1])
        if start is not None and start > end:
            await self.finish(start)  # everything was read before
            return
        since = datetime.fromtimestamp(request.since_ms / 1000 - CLOCK_MARGIN_S, UTC)
        pace = _Rate(rate)
        first: int | None = None
        last: int | None = None
        flushed = time.monotonic()
        try:
            async with StreamReader(
                self.archives.connection, stream, since if start is None else start
            ) as reader:
                while True:
                    past_end = last is not None and last >= end
                    if past_end:
                        wait = TAIL_IDLE
                    elif last is None and start is None:
                        wait = FIRST_WAIT
                    else:
                        wait = STALL_TIMEOUT
                    message = await reader.next(wait)
                    if message is None:
                        if wait != STALL_TIMEOUT:
                            break  # the end; or, from a timestamp, nothing after it
                        raise BridgeError(
                            f"RabbitMQ sent nothing from {stream} for {STALL_TIMEOUT:.0f}s "
                            f"before its end (offset {end})."
                        )
                    headers = headers_of(message)
                    offset = int(str(headers.get(OFFSET_HEADER)))
                    if start is not None and offset < start:
                        continue
                    first = offset if first is None else first
                    last = offset
                    if progress is not None:
                        progress(offset - first + 1, max(end, offset) - first + 1)
                    received = received_of(headers)
                    slack = TAIL_SLACK_MS if offset > end else STOP_SLACK_MS
                    if received is not None and received >= request.until_ms + slack:
                        break
                    if received is not None and request.since_ms <= received < request.until_ms:
                        await self.take(message, headers, pace)
                    if self.publisher is not None and (
                        len(self.pending) >= batch
                        or time.monotonic() - flushed >= PROGRESS_INTERVAL
                    ):
                        if not await self.flush(offset + 1):
                            return
                        flushed = time.monotonic()
            await self.finish(None if last is None else last + 1)
        finally:
            for item in self.pending:
                for confirm in item.publishes:
                    confirm.cancel()

    async def take(self, message: wire.Message, headers: dict[str, Any], pace: _Rate) -> None:
        result = self.result
        content_type = message.properties.content_type
        attrs = replay_headers(headers, "")
        attrs.pop(names.ROUTE)
        # The broker's routing step: stamps bridge-received (now) and, when a filter looks at
        # datacontenttype, copies the content type where filters see it.
        self.archives.routes.exchange_for(
            result.request.broker, attrs, content_type, time.time(), message.body
        )
        queues = self.archives.targets(result.request, attrs, message.body, content_type)
        offset = int(str(headers.get(OFFSET_HEADER)))
        if self.publisher is None:  # dry run
            if queues:
                result.replayed += 1
                result.deliveries += len(queues)
            else:
                result.skipped += 1
            return
        item = _Item(offset)
        if queues:
            await pace.wait()
            attrs[REPLAY_EXTENSION] = result.id
            for queue in queues:
                item.publishes.append(self.publish(message.body, attrs, content_type, queue))
        self.pending.append(item)

    def publish(
        self, body: bytes, attrs: dict[str, Any], content_type: str | None, queue: str
    ) -> asyncio.Future[None]:
        """Publish one copy to `queue`, through bridge.retry; the future is its confirm."""
        assert self.publisher is not None
        return self.publisher.publish_confirmed(
            body,
            exchange=names.RETRY_EXCHANGE,
            properties=wire.Properties(
                delivery_mode=2,
                headers={**attrs, names.ROUTE: queue},
                content_type=content_type,
            ),
            mandatory=True,  # no such queue: returned, and counted as failed
            timeout=PUBLISH_TIMEOUT,
        )

    async def flush(self, next_offset: int) -> bool:
        """Wait for the pending publishes; record the progress up to `next_offset`, or up to the
        first event that failed (then False: the replay stops there)."""
        result = self.result
        items, self.pending = self.pending, []
        await asyncio.gather(*(f for item in items for f in item.publishes), return_exceptions=True)
        failed = []
        for item in items:
            for confirm in item.publishes:
                error = confirm.exception()
                if isinstance(error, wire.DeliveryError | TimeoutError):
                    failed.append(item)  # refused, returned or not confirmed
                    break
                if error is not None:
                    raise error  # the channel or the connection failed: the last record stands
        stop = failed[0].offset if failed else None
        for item in items:
            if stop is not None and item.offset >= stop:
                break
            if item.publishes:
                result.replayed += 1
                result.deliveries += len(item.publishes)
            else:
                result.skipped += 1
        if stop is not None:
            result.failed += len(failed)
            result.next_offset = stop
            result.state = "failed"
            await self.save()
            return False
        if result.next_offset != next_offset or items:
            result.next_offset = next_offset
            await self.save()
        return True

    async def finish(self, next_offset: int | None) -> None:
        if self.publisher is None:
            self.result.state = "done"
            return
        if next_offset is not None and not await self.flush(next_offset):
            return
        self.result.state = "done"
        await self.save()

    async def save(self) -> None:
        """Store the progress record, confirmed (a replay that cannot record stops)."""
        assert self.publisher is not None
        result = self.result
        result.updated = iso(time.time())
        result.seq += 1
        queue = names.replay_progress(result.id)
        try:
            await self.publisher.publish_confirmed(
                orjson.dumps(result.as_record()),
                routing_key=queue,
                properties=wire.Properties(delivery_mode=2, content_type="application/json"),
                mandatory=True,
                timeout=PUBLISH_TIMEOUT,
            )
        except (wire.DeliveryError, TimeoutError):
            raise BridgeError(
                f"RabbitMQ did not store the progress of replay {result.id}."
            ) from None


__all__ = [
    "ArchiveInfo",
    "Archives",
    "ReplayRequest",
    "ReplayResult",
    "archive_streams",
    "describe_archive",
    "parse_rate",
    "parse_time",
]
