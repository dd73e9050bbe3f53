"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from broadcaster import Broadcast


@pytest.fixture
async def broadcast() -> AsyncIterator[Broadcast]:
    """broadcaster's real in-process backend, what embedded mode runs on."""
    bc = Broadcast("memory://")
    await bc.connect()
    try:
        yield bc
    finally:
        await bc.disconnect()
