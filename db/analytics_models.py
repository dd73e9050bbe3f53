"""Analytics tables: minute aggregates, per-user minute counts, consumer offsets, alerts.

Hourly and daily rollups are not stored: queries group the minute rows (see
``db/analytics_repo.py``). That keeps one write per (minute, key) on the hot path
and makes distinct users exact over any range, at the cost of reading up to
1440 rows per key and day, which the range limits of the API bound.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from db.models import Base, utcnow


class EventMinute(Base):
    """Events per (UTC minute, institution, type, department, classroom).

    Department and classroom are '' when the event does not carry them, because
    primary-key columns cannot be NULL.
    """

    __tablename__ = "event_minutes"
    __table_args__ = (Index("ix_event_minutes_institution_bucket", "institution_id", "bucket"),)

    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    institution_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    department_id: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    classroom_id: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)


class EventUserMinute(Base):
    """Events per (minute, institution, type, user): distinct users and per-user rules."""

    __tablename__ = "event_user_minutes"
    __table_args__ = (
        Index("ix_event_user_minutes_institution_bucket", "institution_id", "bucket"),
    )

    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    institution_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class ConsumerOffset(Base):
    """The next offset to apply per (group, topic, partition), written with the
    aggregates in one transaction; also the consumer health the API reports."""

    __tablename__ = "consumer_offsets"

    group_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(String(200), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    high_watermark: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertFired(Base):
    """One row per alert raised, so replays and concurrent consumers raise it once."""

    __tablename__ = "alerts_fired"

    institution_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)
