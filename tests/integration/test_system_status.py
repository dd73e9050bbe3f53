"""``system:status`` is shared by every institution's admins: its presence is kept
per institution, and only the platform role (which no institution's token can
hold) may publish there. Found by an attacker test: northwood's admin listed
riverside's admin there, and any institution's service token reached every
institution's admins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.auth import AuthError
from streams.acl import Role
from tests.presence_client import codes, present, until_members
from tests.server import TOKENS, ServerProcess

STATUS = "system:status"
PUBLISH = """mutation($c: String!) {
  publishAnnouncement(input: {channel: $c, title: "Maintenance", body: "Tonight 22:00"}) { id }
}"""


def platform_token() -> str:
    return TOKENS.mint(sub="ops", role=Role.PLATFORM, institution="platform")


async def test_presence_there_is_per_institution(embedded_server: ServerProcess) -> None:
    server = embedded_server
    async with present(server, "nw-admin", STATUS) as (_, northwood_first):
        async with present(server, "rv-admin", STATUS) as (_, riverside_first):
            assert [m["userId"] for m in northwood_first["members"]] == ["nw-admin"]
            assert [m["userId"] for m in riverside_first["members"]] == ["rv-admin"]
            await until_members(server, "nw-admin", STATUS, {"nw-admin": 1})
            await until_members(server, "rv-admin", STATUS, {"rv-admin": 1})
    await until_members(server, "nw-admin", STATUS, {})


async def test_only_the_platform_publishes_there(embedded_server: ServerProcess) -> None:
    server = embedded_server
    for user in ("nw-bell", "nw-admin"):  # a service and an admin of an institution
        result = await asyncio.to_thread(server.graphql, PUBLISH, {"c": STATUS}, as_user=user)
        assert codes(result) == ["FORBIDDEN"], (user, result)
    response: dict[str, Any] = await asyncio.to_thread(
        _post, server, PUBLISH, {"c": STATUS}, platform_token()
    )
    assert "errors" not in response, response
    # The platform role reaches nothing of any institution.
    denied = await asyncio.to_thread(
        _post, server, PUBLISH, {"c": "institution:northwood"}, platform_token()
    )
    assert codes(denied) == ["FORBIDDEN"]


def _post(
    server: ServerProcess, query: str, variables: dict[str, Any], bearer: str
) -> dict[str, Any]:
    import httpx

    response = httpx.post(
        f"{server.url}/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=10,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(
    ("role", "institution"),
    [(Role.PLATFORM, "northwood"), (Role.SERVICE, "platform"), (Role.ADMIN, "platform")],
)
def test_no_institution_token_holds_the_platform_role(role: Role, institution: str) -> None:
    with pytest.raises(AuthError, match="platform"):
        TOKENS.mint(sub="x", role=role, institution=institution)
