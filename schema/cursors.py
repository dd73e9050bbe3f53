"""Opaque page cursors: a row id behind a prefix naming the list it came from.

Clients pass a cursor back, they do not compute it; the prefix makes a cursor of
one list useless in another (``BAD_INPUT``) instead of silently meaning something.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

import strawberry

from schema.errors import BadInput

MAX_PAGE = 200

PageSize = Annotated[int, strawberry.argument(description="Page size, 1 to 200 (else BAD_INPUT).")]


def after_argument(noun: str) -> object:
    """The ``after`` argument of a page field listing ``noun``."""
    return strawberry.argument(
        description=(
            f"A `nextCursor` this field returned: the page of older {noun} after it. "
            "Omit for the newest page. Another value: BAD_INPUT."
        )
    )


def page_bounds(prefix: str, field: str, first: int, after: str | None) -> int | None:
    """Check a page request: the id to continue before (None: the newest page).
    BAD_INPUT for a size out of range or a cursor of another list."""
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first must be between 1 and {MAX_PAGE}")
    if after is None:
        return None
    before = decode_cursor(prefix, after)
    if before is None:
        raise BadInput(f"after is not a cursor of {field}")
    return before


def encode_cursor(prefix: str, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(prefix: str, cursor: str) -> int | None:
    """The row id in a cursor of ``prefix``, or None if it is not one."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    number = text.removeprefix(f"{prefix}:")
    if not text.startswith(f"{prefix}:") or not number.isdigit() or len(number) > 19:
        return None
    return int(number)
