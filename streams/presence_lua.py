"""Lua scripts of the Redis presence: every state change and its event in one step.

Each script changes the presence keys *and* ``PUBLISH``es the resulting event in one
atomic call, so an event is emitted exactly once even when several processes' janitors
expire the same dead connection at the same moment (the first script removes it; the
others find nothing), and no crash can separate a change from its event. Time is the
Redis server's ``TIME``, so processes with skewed clocks agree on expiry.

Keys (``B`` is ``{prefix}:{presence}``; the hash tag keeps them in one slot)::

    B:conns            ZSET  connection id -> expiry (ms)
    B:meta             HASH  connection id -> {"c": channel, "u": user, "i": institution}
    B:ch:{channel}     HASH  user id -> member JSON (with its connection count)
    B:ver:{channel}    STR   version of the channel's presence, +1 per event
    B:where:{user}     HASH  channel -> connections of the user there
    B:inst:{inst}      HASH  user id -> connections of the user in the institution
    B:status:{user}    STR   {"status", "message"} (expires after a day unused)
"""

from __future__ import annotations

# ARGV[1] = B, ARGV[2] = pub/sub topic for events (shared by every script).
_COMMON = """
local B, topic = ARGV[1], ARGV[2]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(t[1])
end
local function emit(ch, kind, member)
  local ver = redis.call('INCR', B .. ':ver:' .. ch)
  local count = redis.call('HLEN', B .. ':ch:' .. ch)
  redis.call('PUBLISH', topic, cjson.encode(
    {channel = ch, type = kind, member = member, count = count, version = ver}))
end
local function decr(key, field)
  if redis.call('HINCRBY', key, field, -1) <= 0 then redis.call('HDEL', key, field) end
end
local function drop(conn)
  local raw = redis.call('HGET', B .. ':meta', conn)
  redis.call('ZREM', B .. ':conns', conn)
  if not raw then return 0 end
  redis.call('HDEL', B .. ':meta', conn)
  local m = cjson.decode(raw)
  decr(B .. ':where:' .. m.u, m.c)
  decr(B .. ':inst:' .. m.i, m.u)
  local key = B .. ':ch:' .. m.c
  local cur = redis.call('HGET', key, m.u)
  if not cur then return 0 end
  local member = cjson.decode(cur)
  member.connections = member.connections - 1
  if member.connections > 0 then
    redis.call('HSET', key, m.u, cjson.encode(member))
    return 0
  end
  redis.call('HDEL', key, m.u)
  emit(m.c, 'leave', member)
  return 1
end
"""

# ARGV[3..8] = connection, channel, user, institution, member JSON, timeout ms
JOIN = (
    _COMMON
    + """
local conn, ch, u, i = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ms, secs = now_ms()
redis.call('ZADD', B .. ':conns', ms + tonumber(ARGV[8]), conn)
if redis.call('HSETNX', B .. ':meta', conn, cjson.encode({c = ch, u = u, i = i})) == 0 then
  return 0
end
redis.call('HINCRBY', B .. ':where:' .. u, ch, 1)
redis.call('HINCRBY', B .. ':inst:' .. i, u, 1)
local key = B .. ':ch:' .. ch
local cur = redis.call('HGET', key, u)
if cur then
  local member = cjson.decode(cur)
  member.connections = member.connections + 1
  redis.call('HSET', key, u, cjson.encode(member))
  return 0
end
local member = cjson.decode(ARGV[7])
local st = redis.call('GET', B .. ':status:' .. u)
if st then
  local s = cjson.decode(st)
  member.status = s.status
  member.message = s.message
end
member.connections = 1
member.since = secs
redis.call('HSET', key, u, cjson.encode(member))
emit(ch, 'join', member)
return 1
"""
)

# ARGV[3] = connection
LEAVE = _COMMON + "return drop(ARGV[3])\n"

# ARGV[3] = how many expired connections to remove at most in one call
EXPIRE = (
    _COMMON
    + """
local ms = now_ms()
local ids = redis.call('ZRANGEBYSCORE', B .. ':conns', '-inf', ms, 'LIMIT', 0, tonumber(ARGV[3]))
local left = 0
for _, conn in ipairs(ids) do left = left + drop(conn) end
return {#ids, left}
"""
)

# ARGV[3] = timeout ms, ARGV[4..] = connections; returns those no longer known
HEARTBEAT = (
    _COMMON
    + """
local ms = now_ms()
local missing = {}
for n = 4, #ARGV do
  if redis.call('HEXISTS', B .. ':meta', ARGV[n]) == 1 then
    redis.call('ZADD', B .. ':conns', ms + tonumber(ARGV[3]), ARGV[n])
  else
    table.insert(missing, ARGV[n])
  end
end
return missing
"""
)

# ARGV[3..6] = user, status, message ('' for none), status TTL seconds
STATUS = (
    _COMMON
    + """
local u, status, message = ARGV[3], ARGV[4], ARGV[5]
if message == '' then message = nil end
redis.call('SET', B .. ':status:' .. u, cjson.encode({status = status, message = message}),
  'EX', tonumber(ARGV[6]))
local chans = redis.call('HKEYS', B .. ':where:' .. u)
for _, ch in ipairs(chans) do
  local key = B .. ':ch:' .. ch
  local cur = redis.call('HGET', key, u)
  if cur then
    local member = cjson.decode(cur)
    member.status = status
    member.message = message
    redis.call('HSET', key, u, cjson.encode(member))
    emit(ch, 'status', member)
  end
end
return #chans
"""
)

# ARGV[3] = channel; returns {version, member JSON...}
SNAPSHOT = (
    _COMMON
    + """
local ch = ARGV[3]
local out = {tonumber(redis.call('GET', B .. ':ver:' .. ch) or '0')}
for _, v in ipairs(redis.call('HVALS', B .. ':ch:' .. ch)) do table.insert(out, v) end
return out
"""
)
