"""What a WebSocket connection is told about its own token."""

from __future__ import annotations

from datetime import datetime

import strawberry


@strawberry.type(description="The token a WebSocket connection now runs on.")
class TokenRefresh:
    expires_at: datetime = strawberry.field(description="The new token's `exp`.")
    closes_at: datetime = strawberry.field(
        description=(
            "When the server closes this connection (4403 `token expired`) unless it is "
            "refreshed again: `exp` plus the server's leeway."
        )
    )
