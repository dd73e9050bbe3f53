"""How the server's event producer and ``edumatrix consume`` wait out a broker outage.

A broker that is down, hung or electing a leader is waited for, forever, with a
capped and jittered backoff: analytics must never take the API down, and a
consumer that exits on an outage needs a human to start it again. Errors that a
retry cannot fix (a rejected record, missing authorization) are not retried;
the caller decides what that means (the producer counts the event as dropped,
the consumer exits non-zero so its supervisor says so).

Which failures may still have written the record matters for duplicates: a
request that timed out or whose connection broke may have reached the broker
(a hung broker processes the buffered request when it resumes), while a node
that was never reachable, or a partition without a leader, wrote nothing.
"""

from __future__ import annotations

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NodeNotReadyError,
    NotLeaderForPartitionError,
    UnknownTopicOrPartitionError,
)

# The request never left this process, or the broker said it wrote nothing.
_NEVER_WRITTEN = (
    NodeNotReadyError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    UnknownTopicOrPartitionError,
)


def is_transient(exc: BaseException) -> bool:
    """True if waiting for the broker can fix ``exc`` (decided by class and by
    aiokafka's ``retriable`` attribute, never by message)."""
    # KafkaTimeoutError is not ``retriable`` in aiokafka, but a timeout is what a
    # hung broker looks like.
    if isinstance(exc, KafkaTimeoutError | KafkaConnectionError | OSError | TimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


def maybe_written(exc: BaseException) -> bool:
    """False only when the failed send certainly wrote nothing on the broker."""
    return not isinstance(exc, _NEVER_WRITTEN)


def describe(exc: BaseException) -> str:
    """A short, stable name for logs and ``/readyz``: the class, not the message."""
    return exc.__class__.__name__
