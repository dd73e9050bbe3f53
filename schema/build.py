"""The Strawberry schema: root types wire resolvers; limits and masking guard it."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import strawberry
from graphql import GraphQLError
from graphql.validation import ASTValidationRule
from strawberry.extensions import (
    AddValidationRules,
    MaskErrors,
    MaxTokensLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from resolvers import alert_feed as feed_r
from resolvers import alerts as al_r
from resolvers import analytics as an_r
from resolvers import announcements as ann_r
from resolvers import audit as audit_r
from resolvers import channels as chan_r
from resolvers import connection as conn_r
from resolvers import institutions as inst_r
from resolvers import live_stats as live_r
from resolvers import notifications as note_r
from resolvers import presence as pres_r
from resolvers import users as user_r
from schema.alert_feed import AlertPage
from schema.alerts import Acknowledgement, Alert
from schema.analytics import Count, LiveMetrics, Point, SystemStatus
from schema.announcements import Announcement, AnnouncementPage, ChannelEvent, ChannelPosition
from schema.audit import AuditLogPage
from schema.connection import TokenRefresh
from schema.directory import Institution, Me, User
from schema.errors import log_errors, masked, should_mask
from schema.event_extension import EmitEvents
from schema.limits import document_limits
from schema.notifications import MarkReadPayload, Notification, NotificationPage, NotifyResult
from schema.parsing import ParseCache
from schema.presence import PresenceEvent, PresenceSnapshot, StatusUpdate
from schema.presence_history import PresenceSample
from schema.scalars import SCALAR_MAP

if TYPE_CHECKING:
    from api.settings import Settings

__all__ = ["build_schema", "limit_rules", "masked", "should_mask"]


def limit_rules(settings: Settings) -> list[type[ASTValidationRule]]:
    """Depth, alias and selection limits as validation rules; also used by
    ``api.plan``. One rule, linear in the document (``schema.limits``), instead of
    Strawberry's limiters, which walk every fragment spread anew (a fragment bomb)."""
    return [
        document_limits(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
            max_selections=settings.max_selections,
        )
    ]


class Schema(strawberry.Schema):
    """Strawberry's schema, logging errors by whose fault they are (``log_errors``).

    Why here: every path reports its errors through ``process_errors`` (Strawberry's
    execute and subscribe, and the HTTP fast path), so codes and log levels are the
    same whichever path ran.
    """

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        log_errors(errors)


class MaskUnexpected(MaskErrors):
    """Strawberry's masking, with the code the fast paths' ``masked`` gives too."""

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        return masked(error)


def build_schema(settings: Settings, extensions: Sequence[Any] = ()) -> strawberry.Schema:
    """The schema with its limits, caches, masking and event extensions, then
    ``extensions`` (for deployments and tests that add their own; a fast path that
    does not know one leaves it to the stock path, see ``api/accel``).

    Input objects are planned (``schema.inputs.plan_inputs``) by the caller when
    the ``inputs`` fast path is on."""

    @strawberry.type(
        description=(
            "Reads. Every field but `me` and `institutions` is nullable: when one fails "
            "(NOT_FOUND, FORBIDDEN, BAD_INPUT, ...) it is null with its error in `errors`, "
            "and the other fields of the response are still there."
        )
    )
    class Query:
        me: Me = strawberry.field(
            resolver=inst_r.me,
            description=(
                "You, as your token describes you. Non-null: it fails only when the request "
                "is not authenticated, and then every field does."
            ),
        )
        user: User | None = strawberry.field(
            resolver=user_r.user,
            description=(
                "A person of your institution, e.g. to show the name behind an id. Null with "
                "NOT_FOUND for an unknown id or anyone of another institution."
            ),
        )
        institutions: list[Institution] = strawberry.field(
            resolver=inst_r.institutions,
            description="Institutions visible to you (your own).",
        )
        institution: Institution | None = strawberry.field(
            resolver=inst_r.institution,
            description="Your institution by id; null with NOT_FOUND for any other id.",
        )
        announcement_page: AnnouncementPage | None = strawberry.field(
            resolver=ann_r.announcement_page,
            description=(
                "A channel's announcements, newest first, `first` at a time after the cursor "
                "`after`: every stored announcement is reachable. Null with FORBIDDEN, "
                "BAD_CHANNEL or BAD_INPUT."
            ),
        )
        announcements: list[Announcement] | None = strawberry.field(
            resolver=ann_r.announcements,
            description="The newest `last` announcements of a channel, oldest first.",
            deprecation_reason=(
                "Use `announcementPage` (newest first, with a cursor to reach older ones)."
            ),
        )
        channel_position: ChannelPosition | None = strawberry.field(
            resolver=chan_r.channel_position,
            description=(
                "Where a channel is now; subscribe with `since` to resume from it. Null with "
                "FORBIDDEN, BAD_CHANNEL or BAD_INPUT."
            ),
        )
        notification_page: NotificationPage | None = strawberry.field(
            resolver=note_r.notification_page,
            description=(
                "Your notifications, newest first, `first` at a time after the cursor "
                "`after`, with your unread count. Null with BAD_INPUT."
            ),
        )
        notifications: list[Notification] | None = strawberry.field(
            resolver=note_r.notifications,
            description="Your newest `last` notifications, newest first.",
            deprecation_reason=(
                "Use `notificationPage` (a cursor to reach older ones, and unreadCount)."
            ),
        )
        alert: Alert | None = strawberry.field(
            resolver=al_r.alert,
            description=(
                "An alert that targets you, or that you manage (admins, services, whoever "
                "raised it; they also get its roll-call). Null with NOT_FOUND otherwise."
            ),
        )
        alert_page: AlertPage | None = strawberry.field(
            resolver=feed_r.alert_page,
            description=(
                "Your institution's alerts that `alert(id)` would show you, newest first, "
                "`first` at a time after the cursor `after`: all of them (with roll-call) "
                "for admins and services; for anyone else those that target them or that "
                "they raised (with roll-call). Open ones by default. Null with BAD_INPUT."
            ),
        )
        presence: PresenceSnapshot | None = strawberry.field(
            resolver=pres_r.presence,
            description="Who is present on a channel now. Null with FORBIDDEN or BAD_CHANNEL.",
        )
        online_count: int | None = strawberry.field(
            resolver=pres_r.online_count,
            description="Users of your institution present on any channel now.",
        )
        presence_history: list[PresenceSample] | None = strawberry.field(
            resolver=live_r.presence_history,
            description=(
                "Members present on a channel over the last `minutes`, one sample per "
                "interval (a minute by default), oldest first, a null `online` where no "
                "sample was taken. Institution, department, classroom, role and alerts "
                "channels. Null with FORBIDDEN, BAD_CHANNEL or BAD_INPUT, as `presence`."
            ),
        )
        online_count_history: list[PresenceSample] | None = strawberry.field(
            resolver=live_r.online_count_history,
            description=(
                "`onlineCount` over the last `minutes`, one sample per interval, oldest "
                "first, a null `online` where no sample was taken."
            ),
        )
        analytics: list[Point] | None = strawberry.field(
            resolver=an_r.analytics,
            description=(
                "A time series, one point per bucket in [from, to), zeros included, oldest "
                "first. Admins and services of the institution."
            ),
        )
        top_events: list[Count] | None = strawberry.field(
            resolver=an_r.top_events,
            description=(
                "The most frequent event types in [from, to), most frequent first. Admins "
                "and services of the institution."
            ),
        )
        active_users: int | None = strawberry.field(
            resolver=an_r.active_users,
            description=(
                "Distinct users with at least one event in [from, to), exact over any range. "
                "Admins and services of the institution."
            ),
        )
        event_breakdown: list[Count] | None = strawberry.field(
            resolver=an_r.event_breakdown,
            description=(
                "Events in [from, to) per department or classroom, most first. Admins and "
                "services of the institution."
            ),
        )
        system_status: SystemStatus | None = strawberry.field(
            resolver=an_r.system_status,
            description="The event pipeline's health and consumer lag; admins and services.",
        )
        audit_log: AuditLogPage | None = strawberry.field(
            resolver=audit_r.audit_log,
            description=(
                "Your institution's audit log, newest first, `first` (at most 500) rows "
                "after the cursor `after`; for admins only."
            ),
        )

    @strawberry.type(
        description=(
            "Writes. Every field is nullable: one that fails is null with its error in "
            "`errors`, and the others of the same request still run and answer."
        )
    )
    class Mutation:
        publish_announcement: Announcement | None = strawberry.mutation(
            resolver=ann_r.publish_announcement,
            description=(
                "Store an announcement, audit it and publish it on its channel; returns the "
                "stored announcement, as subscribers get it."
            ),
        )
        track_activity: bool | None = strawberry.mutation(
            resolver=an_r.track_activity,
            description=(
                "Record a frontend interaction as the event activity.<type>; false if the "
                "event log dropped it (its buffer was full)."
            ),
        )
        set_status: StatusUpdate | None = strawberry.mutation(
            resolver=pres_r.set_status,
            description="Your status (and message) on every channel where you are present.",
        )
        raise_alert: Alert | None = strawberry.mutation(
            resolver=al_r.raise_alert,
            description="Store, audit and deliver an alert to its targets' people.",
        )
        acknowledge_alert: Acknowledgement | None = strawberry.mutation(
            resolver=al_r.acknowledge_alert,
            description=(
                "Acknowledge an alert that targets you (once; BAD_INPUT if already, or if "
                "it is resolved). Select `alert` to get the updated alert."
            ),
        )
        resolve_alert: Alert | None = strawberry.mutation(
            resolver=al_r.resolve_alert,
            description=(
                "Resolve an open alert (admins, or whoever raised it); returns the updated "
                "alert and announces it on the same channels (kind alert.resolved)."
            ),
        )
        notify: NotifyResult | None = strawberry.mutation(
            resolver=note_r.notify,
            description="Persist and deliver a private notification (admins and services).",
        )
        mark_notifications_read: MarkReadPayload | None = strawberry.mutation(
            resolver=note_r.mark_notifications_read,
            description=(
                "Mark your notifications read; returns them (with `readAt`) and your unread "
                "count, so a client cache updates what it holds."
            ),
        )
        mark_read: int | None = strawberry.mutation(
            resolver=note_r.mark_read,
            description="Mark your notifications read; returns how many were unread.",
            deprecation_reason=(
                "Use `markNotificationsRead`, which returns the notifications and unreadCount."
            ),
        )
        refresh_connection_token: TokenRefresh | None = strawberry.mutation(
            resolver=conn_r.refresh_connection_token,
            description=(
                "Over a WebSocket only: run this connection on a new token (same sub, "
                "inst and role) without dropping its subscriptions; it is then closed "
                "at the new token's exp plus the leeway. Over HTTP: BAD_INPUT."
            ),
        )

    @strawberry.type(
        description=(
            "Live streams, over graphql-transport-ws, graphql-ws, SSE or multipart HTTP. A "
            "subscription that fails ends with one result carrying the error, then complete."
        )
    )
    class Subscription:
        # The resolver is an async generator of ChannelEvent; mypy sees the field type.
        channel: ChannelEvent = strawberry.subscription(  # type: ignore[assignment]
            resolver=chan_r.channel,
            description=(
                "Messages of a channel. With `since`, first replays what you missed "
                "(or says recovered: false), then continues live."
            ),
        )

        live_metrics: LiveMetrics = strawberry.subscription(  # type: ignore[assignment]
            resolver=an_r.live_metrics,
            description=(
                "The institution's live numbers, when they change, at most once a second. "
                "Admins and services of the institution."
            ),
        )
        alerts: Alert = strawberry.subscription(  # type: ignore[assignment]
            resolver=al_r.alerts, description="Alerts raised and resolved in your institution."
        )
        alert_roll_call: Alert = strawberry.subscription(  # type: ignore[assignment]
            resolver=feed_r.alert_roll_call,
            description=(
                "An alert you manage (admins, services, whoever raised it) with its "
                "`rollCall`: now, again after each acknowledgement, and once more when it "
                "is resolved (`state: RESOLVED`), then complete. Others: the error "
                "Query.alert gives them (NOT_FOUND), or FORBIDDEN for the people it targets."
            ),
        )
        presence: PresenceEvent = strawberry.subscription(  # type: ignore[assignment]
            resolver=pres_r.presence_events,
            description=(
                "Be present on a channel while subscribed: a SNAPSHOT, then JOIN, LEAVE "
                "and STATUS events."
            ),
        )

    schema = Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=[
            # Factories: extensions keep per-request state. Each cache is one
            # module-level LRU, so repeated documents skip parsing and validation.
            # The limit rules are built once: limit_rules makes new rule classes per
            # call, and ValidationCache keys on the rules, so per-request instances
            # missed the cache on every request (validation was half the cost of a
            # publish).
            partial(AddValidationRules, limit_rules(settings)),
            partial(MaxTokensLimiter, max_token_count=settings.max_query_tokens),
            ParseCache,  # Strawberry's ParserCache, minus its subscription bug
            partial(ValidationCache, maxsize=1024),
            partial(MaskUnexpected, should_mask_error=should_mask),
            EmitEvents,
            *extensions,
        ],
    )
    return schema
