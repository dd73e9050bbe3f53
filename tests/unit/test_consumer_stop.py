"""The consumer's stop racing a failed connect, at the ``_attempt`` seam (the whole
process against a real broker is tests/integration/test_kafka_outage.py, where
this race made SIGTERM exit 1 once in CI: the connect failed in the same loop
turn as the stop, and the transient error was raised instead of ending the run)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from streams.events import Topics
from streams.kafka_consumer import AnalyticsConsumer


def make_consumer() -> AnalyticsConsumer:
    # Only .group and .dead_letter are read before run(); nothing connects here.
    aggregator: Any = SimpleNamespace(group="g", dead_letter=None)
    return AnalyticsConsumer(
        "127.0.0.1:9",
        Topics(),
        aggregator,
        partitions=1,
        batch_size=10,
        session_timeout_ms=6000,
        rebalance_timeout_ms=6000,
        retry_backoff=0.001,
        retry_backoff_max=0.002,
    )


def test_a_stop_that_races_a_failed_connect_ends_the_run_cleanly() -> None:
    async def main() -> int:
        consumer = make_consumer()
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            consumer.stop()  # SIGTERM arrives while the broker refuses
            raise KafkaConnectionError("Unable to bootstrap")

        consumer._attempt = attempt  # type: ignore[method-assign]
        await asyncio.wait_for(consumer.run(), 10)
        return attempts

    assert asyncio.run(main()) == 1


def test_a_transient_error_is_retried_until_stopped() -> None:
    async def main() -> int:
        consumer = make_consumer()
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 3:
                consumer.stop()
            raise KafkaConnectionError("Unable to bootstrap")

        consumer._attempt = attempt  # type: ignore[method-assign]
        await asyncio.wait_for(consumer.run(), 10)
        return attempts

    assert asyncio.run(main()) == 3


def test_an_error_no_retry_can_fix_still_ends_the_run_with_it() -> None:
    async def main() -> None:
        consumer = make_consumer()

        async def attempt() -> None:
            consumer.stop()
            raise ValueError("bad configuration")

        consumer._attempt = attempt  # type: ignore[method-assign]
        await asyncio.wait_for(consumer.run(), 10)

    with pytest.raises(ValueError, match="bad configuration"):
        asyncio.run(main())
