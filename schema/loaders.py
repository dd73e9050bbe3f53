"""Batched lookups behind the fields that reference rows by id.

Why: a page of 200 announcements that selects ``author { displayName }`` would
otherwise run 200 queries. Each loader collects the keys every resolver of one
execution step asks for and answers them with one query (Strawberry's
``DataLoader``).

Uncached (``cache=False``): a WebSocket connection's context lives as long as the
connection, so a cache would serve names and read states that have since changed,
and grow with every id the connection ever saw. Batching is what removes the
N+1; within a batch each key is fetched once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from strawberry.dataloader import DataLoader

from db import alert_repo, notification_repo, repo
from db.engine import Sessions
from db.models import Institution, User

UserKey = tuple[str, str]  # (institution, user id)
AckKey = tuple[int, str]  # (alert id, user id)


class Loaders:
    """One set per context (an HTTP request, or a WebSocket connection)."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self.users: DataLoader[UserKey, User | None] = DataLoader(self._users, cache=False)
        self.institutions: DataLoader[str, Institution | None] = DataLoader(
            self._institutions, cache=False
        )
        self.unread: DataLoader[str, int] = DataLoader(self._unread, cache=False)
        self.acknowledged: DataLoader[AckKey, datetime | None] = DataLoader(
            self._acknowledged, cache=False
        )

    async def _users(self, keys: Sequence[UserKey]) -> list[User | None]:
        found: dict[UserKey, User] = {}
        for institution in {inst for inst, _ in keys}:
            ids = sorted({user for inst, user in keys if inst == institution})
            for row in await repo.users_in(self._sessions, institution, ids):
                found[(institution, row.id)] = row
        return [found.get(key) for key in keys]

    async def _institutions(self, keys: Sequence[str]) -> list[Institution | None]:
        rows = {
            row.id: row for row in await repo.list_institutions(self._sessions, sorted(set(keys)))
        }
        return [rows.get(key) for key in keys]

    async def _unread(self, keys: Sequence[str]) -> list[int]:
        counts = await notification_repo.unread_counts(self._sessions, sorted(set(keys)))
        return [counts.get(key, 0) for key in keys]

    async def _acknowledged(self, keys: Sequence[AckKey]) -> list[datetime | None]:
        times = await alert_repo.acknowledged_at(self._sessions, sorted(set(keys)))
        return [times.get(key) for key in keys]
