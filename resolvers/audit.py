"""The audit log query: admins read their own institution's rows, nobody else any."""

from __future__ import annotations

from typing import Annotated

import strawberry

from db import audit_read
from resolvers.access import refuse
from schema.audit import AuditEntry, AuditFilter, AuditLogPage, decode_cursor, encode_cursor
from schema.context import Context
from schema.errors import BadInput, Forbidden
from streams.acl import Role

MAX_FIRST = 500


async def audit_log(
    info: strawberry.Info[Context],
    filter: Annotated[
        AuditFilter | None, strawberry.argument(description="Conditions on rows; all if omitted.")
    ] = None,
    after: Annotated[
        str | None,
        strawberry.argument(
            description=(
                "A `nextCursor` this field returned: the page of older rows after it. Omit "
                "for the newest page. Another value: BAD_INPUT."
            )
        ),
    ] = None,
    first: Annotated[
        int, strawberry.argument(description="Page size, 1 to 500 (else BAD_INPUT).")
    ] = 50,
) -> AuditLogPage:
    """Your institution's audit rows, newest first; admins only (a refusal is itself
    audited). Failed authentications carry no institution and are not listed."""
    ctx = info.context
    viewer = ctx.require_viewer()
    if viewer.role is not Role.ADMIN:
        error = Forbidden("the audit log is for admins of the institution")
        await refuse(ctx, "auditLog", f"institution:{viewer.institution}", error)
    if not 1 <= first <= MAX_FIRST:
        raise BadInput(f"first must be between 1 and {MAX_FIRST}")
    before = None
    if after is not None:
        before = decode_cursor(after)
        if before is None:
            raise BadInput("after is not a cursor this query returned")
    f = filter or AuditFilter()
    query = audit_read.AuditQuery(
        action=f.action,
        outcome=f.outcome.value if f.outcome is not None else None,
        actor=str(f.actor) if f.actor is not None else None,
        since=f.since,
        until=f.until,
    )
    rows, next_id = await audit_read.page(ctx.sessions, viewer.institution, query, before, first)
    return AuditLogPage(
        rows=[AuditEntry.from_row(r) for r in rows],
        next_cursor=encode_cursor(next_id) if next_id is not None else None,
    )
