"""EDUMATRIX_REDIS_URL: one Redis, a Redis Cluster or a shard list, decided by one
parser for every component; a URL it cannot read stops the server at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from api.settings import Settings
from streams.redis_client import parse_redis_url, shard_of, state_url


def test_one_redis() -> None:
    target = parse_redis_url("redis://:pw@10.0.0.1:6380/2")
    assert not target.cluster and target.shards == ("redis://:pw@10.0.0.1:6380/2",)
    assert target.nodes == (("10.0.0.1", 6380),)


def test_a_cluster_keeps_credentials_and_options_for_every_node() -> None:
    target = parse_redis_url("rediss+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001?ssl_cert_reqs=none")
    assert target.cluster
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert target.url == "rediss://u:pw@10.0.0.1:7000?ssl_cert_reqs=none"


def test_a_shard_list_and_where_its_state_lives() -> None:
    url = "redis://10.0.0.1:6379/0,redis://10.0.0.2:6379/0"
    target = parse_redis_url(url)
    assert not target.cluster and len(target.shards) == 2
    assert state_url(url) == "redis://10.0.0.1:6379/0"
    assert state_url("redis://x:1/0") == "redis://x:1/0"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://a:1,b:2", "redis\\+cluster://"),
        ("http://a:1", "unknown Redis URL scheme"),
        ("redis+cluster://a:1/3", "only database 0"),
        ("redis+cluster://a:1,,b:2", "empty host"),
        ("redis://a:1/0,redis://a:1/0", "listed twice"),
        ("redis://a:1/0,rediss+cluster://b:2", "shard list takes redis://"),
    ],
)
def test_what_is_refused_says_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_redis_url(url)
    with pytest.raises(ValidationError, match=says):
        Settings(redis_url=url)


def test_a_channel_shard_is_its_slot_range() -> None:
    """Equal slot ranges in list order, as a fresh cluster of as many masters
    assigns them; stable for a given count."""
    for n in range(200):
        channel = f"institution:i{n}"
        slot = key_slot(channel.encode())
        assert shard_of(channel, 1) == 0
        assert shard_of(channel, 3) == slot * 3 // 16384
    spread = {shard_of(f"user:u{n}", 4) for n in range(200)}
    assert spread == {0, 1, 2, 3}


def test_a_comma_in_a_password_is_not_a_host_list() -> None:
    assert parse_redis_url("redis://:pa,ss@h:6379/0").shards == ("redis://:pa,ss@h:6379/0",)
    target = parse_redis_url("redis://:pa,ss@h:1/0,redis://:x,y@k:2/0")
    assert target.shards == ("redis://:pa,ss@h:1/0", "redis://:x,y@k:2/0")


def test_a_cluster_node_on_ipv6_gets_a_url_redis_py_reads() -> None:
    from redis.asyncio.connection import parse_url

    from streams.redis_sharded import ShardedPubSubBackend

    backend = ShardedPubSubBackend("redis+cluster://:pw@[::1]:7000,[::1]:7001", prefix="x")
    url = backend.node_url("::1", 7001)
    assert url == "redis://:pw@[::1]:7001"
    assert (parse_url(url)["host"], parse_url(url)["port"]) == ("::1", 7001)
