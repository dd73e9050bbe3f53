"""One JSON encoder for every GraphQL response body and WebSocket message.

Strawberry's ``encode_json`` builds a ``JSONEncoder`` per call (compact
separators); one shared encoder gives the same bytes without that cost, which was
a few percent of a handshake (every ``connection_ack`` and ``next`` goes through it).
"""

from __future__ import annotations

import json

COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
