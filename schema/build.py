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

from resolvers import alerts as al_r
from resolvers import analytics as an_r
from resolvers import announcements as ann_r
from resolvers import audit as audit_r
from resolvers import channels as chan_r
from resolvers import connection as conn_r
from resolvers import institutions as inst_r
from resolvers import notifications as note_r
from resolvers import presence as pres_r
from schema.alerts import Acknowledgement, Alert
from schema.analytics import Count, LiveMetrics, Point, SystemStatus
from schema.announcements import Announcement, ChannelEvent, ChannelPosition
from schema.audit import AuditLogPage
from schema.connection import TokenRefresh
from schema.directory import Institution, Me
from schema.errors import log_errors, masked, should_mask
from schema.event_extension import EmitEvents
from schema.limits import document_limits
from schema.notifications import Notification, NotifyResult
from schema.parsing import ParseCache
from schema.presence import PresenceEvent, PresenceSnapshot, StatusUpdate
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

    @strawberry.type
    class Query:
        institutions: list[Institution] = strawberry.field(
            resolver=inst_r.institutions,
            description="Institutions visible to you (your own).",
        )
        institution: Institution = strawberry.field(resolver=inst_r.institution)
        me: Me = strawberry.field(resolver=inst_r.me)
        announcements: list[Announcement] = strawberry.field(
            resolver=ann_r.announcements,
            description="The newest `last` announcements of a channel, oldest first.",
        )
        channel_position: ChannelPosition = strawberry.field(
            resolver=chan_r.channel_position,
            description="Where a channel is now; subscribe with `since` to resume from it.",
        )
        analytics: list[Point] = strawberry.field(resolver=an_r.analytics)
        top_events: list[Count] = strawberry.field(resolver=an_r.top_events)
        active_users: int = strawberry.field(resolver=an_r.active_users)
        event_breakdown: list[Count] = strawberry.field(resolver=an_r.event_breakdown)
        system_status: SystemStatus = strawberry.field(resolver=an_r.system_status)
        presence: PresenceSnapshot = strawberry.field(
            resolver=pres_r.presence, description="Who is present on a channel now."
        )
        online_count: int = strawberry.field(
            resolver=pres_r.online_count,
            description="Users of your institution present on any channel now.",
        )
        alert: Alert = strawberry.field(
            resolver=al_r.alert, description="An alert; with its roll-call for those who manage it."
        )
        notifications: list[Notification] = strawberry.field(
            resolver=note_r.notifications, description="Your newest notifications, newest first."
        )
        audit_log: AuditLogPage = strawberry.field(
            resolver=audit_r.audit_log,
            description=(
                "Your institution's audit log, newest first, `first` (at most 500) rows "
                "after the cursor `after`; for admins only."
            ),
        )

    @strawberry.type
    class Mutation:
        publish_announcement: Announcement = strawberry.mutation(
            resolver=ann_r.publish_announcement,
            description="Store an announcement, audit it and publish it on its channel.",
        )
        track_activity: bool = strawberry.mutation(resolver=an_r.track_activity)
        set_status: StatusUpdate = strawberry.mutation(
            resolver=pres_r.set_status,
            description="Your status (and message) on every channel where you are present.",
        )
        raise_alert: Alert = strawberry.mutation(
            resolver=al_r.raise_alert,
            description="Store, audit and deliver an alert to its targets' people.",
        )
        acknowledge_alert: Acknowledgement = strawberry.mutation(resolver=al_r.acknowledge_alert)
        resolve_alert: Alert = strawberry.mutation(resolver=al_r.resolve_alert)
        notify: NotifyResult = strawberry.mutation(
            resolver=note_r.notify, description="Persist and deliver a private notification."
        )
        mark_read: int = strawberry.mutation(resolver=note_r.mark_read)
        refresh_connection_token: TokenRefresh = strawberry.mutation(
            resolver=conn_r.refresh_connection_token,
            description=(
                "Over a WebSocket only: run this connection on a new token (same sub, "
                "inst and role) without dropping its subscriptions; it is then closed "
                "at the new token's exp plus the leeway. Over HTTP: BAD_INPUT."
            ),
        )

    @strawberry.type
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
            resolver=an_r.live_metrics
        )
        alerts: Alert = strawberry.subscription(  # type: ignore[assignment]
            resolver=al_r.alerts, description="Alerts raised and resolved in your institution."
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
