"""Alerts with roll-call, and private notifications with per-recipient read state.

The targeted people of an alert are fixed when it is raised (one ``alert_recipients``
row each): a lockdown roll-call must not change because the directory did meanwhile,
and "who has not acknowledged" is then an exact count over rows. Notifications are
one message row plus one receipt per recipient, so a role-wide notification keeps one
id everywhere while each person reads it on their own.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db.models import Base, BigId, utcnow


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_institution_id_id", "institution_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    institution_id: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    targets: Mapped[list[str]] = mapped_column(JSON)
    raised_by: Mapped[str] = mapped_column(String(64))
    raised_by_role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column()
    resolved_by: Mapped[str | None] = mapped_column(String(64))


class AlertRecipient(Base):
    """One targeted person of one alert; ``acknowledged_at`` is set once."""

    __tablename__ = "alert_recipients"

    alert_id: Mapped[int] = mapped_column(
        ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column()


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    institution_id: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(200))
    sender_id: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationReceipt(Base):
    """One recipient of one notification, with their own read state."""

    __tablename__ = "notification_receipts"
    __table_args__ = (
        Index("ix_notification_receipts_user_id_notification_id", "user_id", "notification_id"),
    )

    notification_id: Mapped[int] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    read_at: Mapped[datetime | None] = mapped_column()
