"""Parse each distinct document once, and let a document that does not parse fail
the way Strawberry's own parsing fails.

Why not Strawberry's ``ParserCache``: its ``on_parse`` parses inside the extension
hook, so a syntax error escapes Strawberry's error handling. Over HTTP it still
became an error response, but a subscription whose document did not parse (or held
a lone surrogate in a string) ended with a bare ``complete`` on graphql-transport-ws
and with nothing at all on legacy graphql-ws. Here a failed parse leaves the
document unset, so Strawberry parses it itself and reports the syntax error as it
does without any cache: 4400 with the message (graphql-transport-ws), an ``error``
message (graphql-ws), a 400 (HTTP).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from graphql import DocumentNode, GraphQLError
from graphql.language.parser import parse
from strawberry.extensions import SchemaExtension

# Shared by every request (extensions are built per request); bounded, so unique
# documents from a client cannot grow memory without limit.
CACHE_SIZE = 1024


@lru_cache(maxsize=CACHE_SIZE)
def _parse(query: str, max_tokens: int | None) -> DocumentNode:
    return parse(query, max_tokens=max_tokens)


class ParseCache(SchemaExtension):
    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if context.query is not None and context.graphql_document is None:
            try:
                context.graphql_document = _parse(
                    context.query, context.parse_options.get("max_tokens")
                )
            except GraphQLError:
                pass  # Strawberry parses it again and reports the error as usual
        yield
