"""RabbitMQ names, in one place: every exchange and queue bridge uses is derived here.

bridge.broker.<ns>.<broker>      headers exchange per broker; triggers bind with x-match=all
bridge.unmatched.<ns>.<broker>   fanout exchange + bounded queue: events no trigger matched
bridge.trigger.<ns>.<trigger>    a trigger's queue (quorum by default)
bridge.dlq.<ns>.<trigger>        a trigger's dead letters
bridge.dls.<ns>.<trigger>        dead letters on their way to the trigger's deadLetterSink
bridge.delay.<ms>                waiting retries; expired messages go to bridge.retry
bridge.retry                     headers exchange routing on `bridge-route` (a queue name)
bridge.catalog                   one message per trigger ever declared (for topology prune)
bridge.archive.<ns>.<broker>     stream: every event the broker accepted (when archived)
bridge.replay.<id>               the progress record of archive replay <id> (the newest only)
bridge.replay.<id>.lock          exclusive queue held while replay <id> runs
"""

from __future__ import annotations

PREFIX = "bridge."
RETRY_EXCHANGE = "bridge.retry"
CATALOG = "bridge.catalog"
DELAY_PREFIX = "bridge.delay."
TRIGGER_PREFIX = "bridge.trigger."
DLQ_PREFIX = "bridge.dlq."
SINK_PREFIX = "bridge.dls."
ARCHIVE_PREFIX = "bridge.archive."
REPLAY_PREFIX = "bridge.replay."

# bridge's own AMQP headers (CloudEvents attributes are the `ce-*` headers).
ROUTE = "bridge-route"  # queue a waiting retry or a replayed dead letter goes back to
ATTEMPTS = "bridge-attempts"  # delivery attempts already made
RECEIVED = "bridge-received"  # ingress time, epoch milliseconds (end-to-end latency)
TRIGGER = "bridge-trigger"  # namespace/name of the trigger a dead letter failed on
FIRST_FAILURE = "bridge-first-failure"
LAST_FAILURE = "bridge-last-failure"
LAST_ERROR = "bridge-last-error"
LAST_STATUS = "bridge-last-status"
DEAD_LETTERED = "bridge-dead-lettered"


def _named(prefix: str, key: str) -> str:
    """`<prefix><namespace>.<name>` for a `namespace/name` key."""
    namespace, _, name = key.partition("/")
    return f"{prefix}{namespace}.{name}"


def broker_exchange(broker_key: str) -> str:
    return _named("bridge.broker.", broker_key)


def unmatched(broker_key: str) -> str:
    return _named("bridge.unmatched.", broker_key)


def trigger_queue(trigger_key: str) -> str:
    return _named(TRIGGER_PREFIX, trigger_key)


def dead_letter_queue(trigger_key: str) -> str:
    return _named(DLQ_PREFIX, trigger_key)


def sink_queue(trigger_key: str) -> str:
    return _named(SINK_PREFIX, trigger_key)


def delay_queue(milliseconds: int) -> str:
    return f"{DELAY_PREFIX}{milliseconds}"


def archive_stream(broker_key: str) -> str:
    return _named(ARCHIVE_PREFIX, broker_key)


def replay_progress(replay_id: str) -> str:
    return f"{REPLAY_PREFIX}{replay_id}"


def replay_lock(replay_id: str) -> str:
    return f"{REPLAY_PREFIX}{replay_id}.lock"
