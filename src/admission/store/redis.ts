import { createHash, randomUUID } from 'node:crypto';
import type { Logger } from '../../log.js';
import { silentLogger } from '../../log.js';
import { ConfigError, SpawngateError } from '../../errors.js';
import { slotKey } from './types.js';
import type { IdempotencyClaim, IdempotencyStore, ReservationRecord, ReservationRequest, ReservationStore, ReserveOutcome, ReserveRejection, SlotKey, WaitingTicket, WaitQueue } from './types.js';

/**
 * The few ioredis calls this store makes. ioredis' `Redis` satisfies it; so does anything shaped
 * like it (a Cluster whose keys share one hash slot, a client with custom TLS or Sentinel setup).
 */
export interface RedisClient {
  evalsha(sha1: string, numkeys: number, ...args: (string | number)[]): Promise<unknown>;
  eval(script: string, numkeys: number, ...args: (string | number)[]): Promise<unknown>;
  zrange(key: string, start: number, stop: number): Promise<string[]>;
  hgetall(key: string): Promise<Record<string, string>>;
  quit(): Promise<unknown>;
  disconnect(): void;
}

export interface RedisStoreOptions {
  /** redis://, rediss:// (TLS) or unix:///path/to/socket; the db number is the path (redis://host:6379/2). */
  url?: string;
  /** Never put it in the URL: configs name an environment variable instead (see createStoreFromConfig). */
  password?: string;
  /** Every key this store touches starts with it. For Redis Cluster include a hash tag, e.g. `spawngate:{gw}:`. */
  keyPrefix?: string;
  logger?: Logger;
  /**
   * A clock for tests. Without it the scripts read Redis' own `TIME`, so every gateway sharing the
   * server refills buckets and stamps history on one clock however far their hosts' clocks drift.
   */
  now?: () => number;
  /** Use this client instead of connecting to `url`. It stays yours: `close()` leaves it open. */
  client?: RedisClient;
  /** How long reservation timestamps are kept for `recent()` (default 10 minutes, as in memory). */
  recentRetentionMs?: number;
  /** Upper bound on one Redis round trip before reserve/release/… reject (default 5000). */
  commandTimeoutMs?: number;
}

interface IoredisModule {
  Redis: new (...args: unknown[]) => RedisClient & {
    readonly status: string;
    on(event: string, listener: (...args: unknown[]) => void): unknown;
  };
  ReplyError: abstract new (...args: never[]) => Error;
}

/**
 * Loads ioredis on first use, so gateways on the memory store never need it installed.
 * `load` exists so the "not installed" path can be exercised with a module that truly is absent.
 */
export async function loadIoredis(load: () => Promise<unknown> = () => import('ioredis')): Promise<IoredisModule> {
  try {
    const mod = (await load()) as Partial<IoredisModule> & { default?: Partial<IoredisModule> };
    const Redis = mod.Redis ?? mod.default?.Redis;
    const ReplyError = mod.ReplyError ?? mod.default?.ReplyError;
    if (typeof Redis !== 'function' || typeof ReplyError !== 'function') throw new TypeError('ioredis does not export Redis and ReplyError');
    return { Redis, ReplyError };
  } catch (err) {
    throw new SpawngateError('DEPENDENCY_MISSING', 'the Redis reservation store needs ioredis: install ioredis (npm install ioredis)', { cause: err });
  }
}

// ─── Lua ─────────────────────────────────────────────────────────────────────────────────────
// Redis runs a script to completion before serving any other command, so each script below is
// the critical section that the memory store gets from JavaScript's run-to-completion: every
// cap and bucket is read and every slot and token taken with nothing interleaved. All reads come
// before the first write, so a rejection writes nothing.

const CLOCK = `
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(x) return string.format('%.17g', x) end
`;

/**
 * Lease housekeeping shared by every script. The index zset scores each reservation by the instant
 * its lease lapses (the server's clock; +inf without a lease), so lapsed ones are a range query.
 * A lapsed reservation is freed exactly as a release would free it, inside the same script as the
 * call that found it, so no reader ever counts a slot whose holder stopped renewing it.
 * Keys that live only while some lease does get a TTL of lease + one more lease period (the grace in
 * which a call reclaims them properly); a TTL never shrinks, so a key outlives every lease it serves.
 */
const LEASES = `
local function free(index, recordKey, id, counterPrefix, now)
  local r = redis.call('HMGET', recordKey, 'slots', 'tree', 'charge', 'createdAt')
  local slots = r[1]
  if slots then
    for _, slot in ipairs(cjson.decode(slots)) do
      local key = counterPrefix .. slot
      if redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
    end
    -- The tree keeps what the worker ran, not the TTL it held (a tree already forgotten stays so).
    local treeExp = r[2] and redis.call('HGET', r[2], 'exp')
    if treeExp and tonumber(treeExp) > now then
      local charge = tonumber(r[3])
      local used = math.floor(math.min(charge, math.max(0, now - tonumber(r[4]))))
      local left = redis.call('HINCRBY', r[2], 'chargedMs', -(charge - used))
      if left < 0 then redis.call('HSET', r[2], 'chargedMs', 0) end
    end
    redis.call('DEL', recordKey)
  end
  redis.call('ZREM', index, id)
  return slots and 1 or 0
end
-- Bounded per call so one script never runs long; whatever is left goes on the next call.
local function reclaim(index, recordPrefix, counterPrefix, now)
  local lapsed = redis.call('ZRANGEBYSCORE', index, '-inf', num(now), 'LIMIT', 0, 256)
  for _, id in ipairs(lapsed) do free(index, recordPrefix .. id, id, counterPrefix, now) end
  return #lapsed
end
local function extend(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl == -1 then return end -- persistent: a reservation without a lease shares it
  if ttl < ms then redis.call('PEXPIRE', key, string.format('%.0f', ms)) end
end
-- The index may expire only while every entry in it is a lease (reservations without one score +inf).
local function extendIndex(index, ms)
  if redis.call('ZCOUNT', index, '+inf', '+inf') > 0 then return end
  if redis.call('PTTL', index) < ms then redis.call('PEXPIRE', index, string.format('%.0f', ms)) end
end
`;

/**
 * The wait queue: a zset of ticket ids scored by (255 - priority) * 2^45 + turn (ids start with a
 * zero-padded arrival number, so equal scores keep arrival order), a hash of tickets (JSON: p, user,
 * tag, limits [[slot, max]…], exp, since, meta), a hash of each user's last turn, and a state hash
 * (served: the turn of the last waiter served; seq). `exp` is on the scripts' clock, as leases are.
 */
const QUEUE = `
local function queueKeys(prefix) return prefix, prefix .. ':tickets', prefix .. ':users', prefix .. ':state' end
local function keepFor(key, ms) if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, string.format('%.0f', ms)) end end
-- Drops lapsed tickets; answers the live ones head first, each {id, ticket}.
local function waiters(prefix, now)
  local q, tickets, users = queueKeys(prefix)
  local live = {}
  for _, id in ipairs(redis.call('ZRANGE', q, 0, -1)) do
    local raw = redis.call('HGET', tickets, id)
    local t = raw and cjson.decode(raw)
    if t and tonumber(t.exp) > now then live[#live + 1] = {id, t}
    else
      redis.call('ZREM', q, id)
      redis.call('HDEL', tickets, id)
    end
  end
  if #live == 0 then redis.call('DEL', users) end
  return live
end
local function dropTicket(prefix, id)
  local q, tickets, users = queueKeys(prefix)
  local raw = redis.call('HGET', tickets, id)
  redis.call('ZREM', q, id)
  redis.call('HDEL', tickets, id)
  if redis.call('ZCARD', q) == 0 then redis.call('DEL', users) end
  return raw and cjson.decode(raw)
end
`;

/**
 * KEYS: [1] reservation index (zset id -> lease expiry), [2] the new record (hash),
 *       then nc concurrency counters (one per limit, repeats allowed), nr token buckets (one per
 *       rate limit), nh recent-history zsets (distinct), and the spawn tree's hash when there is one.
 * ARGV: [1] "reserve"|"check", [2] clock ms or "" for Redis TIME, [3] nc, [4] nr, [5] nh,
 *       [6] history retention ms, [7] reservation id, [8] spawnId, [9] slots JSON, [10] meta JSON,
 *       [11] holder, [12] lease ms or "" for none, [13] record key prefix, [14] counter key prefix,
 *       [15] queue key prefix, [16] wait ticket or "", then max per concurrency limit, then perMinute, burst per rate limit, then for a tree:
 *       max spawns (-1: none), max worker ms (-1: none), this spawn's charge ms, keep ms (window).
 * Returns {1, now, leaseExpiresAt|-1, tree spawns, tree charged ms} on success, {0, 1, i, active}
 *         when concurrency limit i is full, {0, 2, i, retryAfterMs} when rate limit i has no token,
 *         {0, 3, 1, spawns} / {0, 3, 2, charged ms} when the tree's spawns / worker-seconds are spent,
 *         {0, 4, i, waiting, active} when `waiting` queued waiters that can take limit i's slot go first.
 */
const RESERVE_LUA = `${CLOCK}${LEASES}${QUEUE}
local nc, nr, nh = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local A = 16
-- The id is fresh per call, so this only matters if a client re-sends the same call: it must not
-- take the slots a second time.
local existing = redis.call('HMGET', KEYS[2], 'createdAt', 'leaseExpiresAt')
if existing[1] then return {1, tonumber(existing[1]), tonumber(existing[2] or '-1')} end
local now = clock(ARGV[2])
reclaim(KEYS[1], ARGV[13], ARGV[14], now)

for i = 1, nc do
  local active = tonumber(redis.call('GET', KEYS[2 + i]) or '0')
  if active >= tonumber(ARGV[A + i]) then return {0, 1, i, active} end
end

-- Waiters queued ahead of this request (of its ticket; all of them without one) that share one of
-- its slots and fit every cap they wait for go first: the slot is theirs.
if nc > 0 and redis.call('EXISTS', ARGV[15]) == 1 then
  local counterPrefix = ARGV[14]
  local first, waiting = nil, 0
  for _, w in ipairs(waiters(ARGV[15], now)) do
    if w[1] == ARGV[16] then break end
    local shared, fits = nil, true
    for _, l in ipairs(w[2].limits) do
      if tonumber(redis.call('GET', counterPrefix .. l[1]) or '0') >= tonumber(l[2]) then fits = false end
      for i = 1, nc do
        if not shared and KEYS[2 + i] == counterPrefix .. l[1] then shared = i end
      end
    end
    if shared and fits then
      first = first or shared
      waiting = waiting + 1
    end
  end
  if first then return {0, 4, first, waiting, tonumber(redis.call('GET', KEYS[2 + first]) or '0')} end
end

local function bucket(i)
  local key = KEYS[2 + nc + i]
  local perMs = tonumber(ARGV[A + nc + 2 * i - 1]) / 60000
  local burst = tonumber(ARGV[A + nc + 2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'updatedAt')
  if not state[1] then return key, burst, now, perMs, burst end
  local tokens, last = tonumber(state[1]), tonumber(state[2])
  -- Only a caller-supplied clock can run backwards; never let that drain a bucket.
  if now <= last then return key, math.min(burst, tokens), last, perMs, burst end
  return key, math.min(burst, tokens + (now - last) * perMs), now, perMs, burst
end

for i = 1, nr do
  local _, tokens, _, perMs = bucket(i)
  if tokens < 1 then return {0, 2, i, math.ceil((1 - tokens) / perMs)} end
end

local T = A + nc + 2 * nr
local treeKey = KEYS[3 + nc + nr + nh]
local treeSpawns, treeCharged = 0, 0
if treeKey then
  -- 'exp' is on the scripts' clock (as leases are); the key's own TTL only collects what nobody reads.
  local t = redis.call('HMGET', treeKey, 'spawns', 'chargedMs', 'exp')
  if t[3] and tonumber(t[3]) > now then treeSpawns, treeCharged = tonumber(t[1]), tonumber(t[2]) end
  local maxSpawns, maxMs, charge = tonumber(ARGV[T + 1]), tonumber(ARGV[T + 2]), tonumber(ARGV[T + 3])
  if maxSpawns >= 0 and treeSpawns + 1 > maxSpawns then return {0, 3, 1, treeSpawns} end
  if maxMs >= 0 and treeCharged + charge > maxMs then return {0, 3, 2, treeCharged} end
end

if ARGV[1] == 'check' then return {1, now, -1} end

local lease = ARGV[12] ~= '' and tonumber(ARGV[12]) or nil
local keep = lease and (2 * lease) or nil
local seen = {}
for i = 1, nc do
  local key = KEYS[2 + i]
  -- The same key named by two limits is one slot.
  if not seen[key] then
    seen[key] = true
    local fresh = redis.call('EXISTS', key) == 0
    redis.call('INCR', key)
    if not keep then redis.call('PERSIST', key)
    elseif fresh then redis.call('PEXPIRE', key, string.format('%.0f', keep))
    else extend(key, keep) end
  end
end
for i = 1, nr do
  local key, tokens, updatedAt, perMs, burst = bucket(i)
  tokens = tokens - 1
  redis.call('HSET', key, 'tokens', num(tokens), 'updatedAt', num(updatedAt))
  -- Once full again a bucket equals a missing one, so it may vanish then: idle buckets do not pile up.
  local ttl = math.min(math.ceil((burst - tokens) / perMs) + 1000, 1e15)
  redis.call('PEXPIRE', key, string.format('%.0f', ttl))
end
local retention = tonumber(ARGV[6])
for i = 1, nh do
  local key = KEYS[2 + nc + nr + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now - retention))
  redis.call('ZADD', key, num(now), ARGV[7])
  redis.call('PEXPIRE', key, string.format('%.0f', retention))
end
local expiresAt = lease and (now + lease) or -1
redis.call('HSET', KEYS[2], 'spawnId', ARGV[8], 'slots', ARGV[9], 'createdAt', num(now), 'meta', ARGV[10], 'holder', ARGV[11], 'leaseExpiresAt', num(expiresAt))
if treeKey then
  local charge = tonumber(ARGV[T + 3])
  -- Kept for its window past the end of the longest TTL charged to it; a lapsed tree starts afresh.
  local keepTree = charge + tonumber(ARGV[T + 4])
  local exp = tonumber(redis.call('HGET', treeKey, 'exp') or '0')
  if exp <= now then exp = 0 end
  treeSpawns, treeCharged = treeSpawns + 1, treeCharged + charge
  redis.call('HSET', treeKey, 'spawns', treeSpawns, 'chargedMs', string.format('%.0f', treeCharged), 'exp', num(math.max(exp, now + keepTree)))
  if redis.call('PTTL', treeKey) < keepTree then redis.call('PEXPIRE', treeKey, string.format('%.0f', keepTree)) end
  redis.call('HSET', KEYS[2], 'tree', treeKey, 'charge', string.format('%.0f', charge))
end
if ARGV[16] ~= '' then
  -- The ticket's wait is over; its turn is the queue's progress.
  local t = dropTicket(ARGV[15], ARGV[16])
  if t then
    local _, _, users, state = queueKeys(ARGV[15])
    local served = math.max(tonumber(redis.call('HGET', state, 'served') or '0'), tonumber(t.tag))
    redis.call('HSET', state, 'served', served)
    if tonumber(redis.call('HGET', users, t.user) or '0') <= served then redis.call('HDEL', users, t.user) end
  end
end
if keep then
  redis.call('PEXPIRE', KEYS[2], string.format('%.0f', keep))
  redis.call('ZADD', KEYS[1], num(expiresAt), ARGV[7])
  extendIndex(KEYS[1], keep)
else
  redis.call('ZADD', KEYS[1], '+inf', ARGV[7])
  redis.call('PERSIST', KEYS[1])
end
return {1, now, expiresAt, treeSpawns, treeCharged}
`;

/**
 * KEYS: [1] the record, [2] reservation index. ARGV: [1] counter key prefix, [2] reservation id,
 * [3] clock ms or "", [4] record key prefix.
 * The record names its own slots, so a release needs nothing but the id and frees each slot once:
 * the DEL of the record is what makes a second release find nothing. A lapsed lease is not the
 * caller's to release any more: it is reclaimed (freed once) and the release answers 0.
 */
const RELEASE_LUA = `${CLOCK}${LEASES}
local now = clock(ARGV[3])
reclaim(KEYS[2], ARGV[4], ARGV[1], now)
return free(KEYS[2], KEYS[1], ARGV[2], ARGV[1], now)
`;

/**
 * KEYS: [1] reservation index. ARGV: [1] clock ms or "", [2] lease ms, [3] record key prefix,
 * [4] counter key prefix, then reservation ids. Returns the ids whose lease was extended.
 */
const RENEW_LUA = `${CLOCK}${LEASES}
local now = clock(ARGV[1])
reclaim(KEYS[1], ARGV[3], ARGV[4], now)
local lease = tonumber(ARGV[2])
local keep = 2 * lease
local held = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local recordKey = ARGV[3] .. id
  local slots = redis.call('HGET', recordKey, 'slots')
  if slots then
    redis.call('HSET', recordKey, 'leaseExpiresAt', num(now + lease))
    redis.call('ZADD', KEYS[1], num(now + lease), id)
    extend(recordKey, keep)
    for _, slot in ipairs(cjson.decode(slots)) do extend(ARGV[4] .. slot, keep) end
    held[#held + 1] = id
  end
end
extendIndex(KEYS[1], keep)
return held
`;

/** KEYS: [1] reservation index, then counters. ARGV: [1] clock ms or "", [2] record prefix, [3] counter prefix. */
const COUNTS_LUA = `${CLOCK}${LEASES}
reclaim(KEYS[1], ARGV[2], ARGV[3], clock(ARGV[1]))
local out = {}
for i = 2, #KEYS do out[i - 1] = tonumber(redis.call('GET', KEYS[i]) or '0') end
return out
`;

/** KEYS: history zsets. ARGV: [1] clock ms or "", [2] window ms, [3] retention ms. */
const RECENT_LUA = `${CLOCK}
local now = clock(ARGV[1])
local from = num(now - math.min(tonumber(ARGV[2]), tonumber(ARGV[3])))
local out = {}
for i = 1, #KEYS do out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. from, '+inf') end
return out
`;

/**
 * Idempotency keys: one hash per key (state pending|done, fp, spawnId, result, exp). `exp` is on the
 * scripts' clock, so an injected test clock drives lapses as it drives leases; the key's TTL (the
 * same length, on Redis' clock) only collects what nobody touches again.
 */
const IDEMPOTENCY = `
local function entry(key, now)
  local h = redis.call('HMGET', key, 'state', 'fp', 'spawnId', 'result', 'exp')
  if h[1] and tonumber(h[5]) <= now then
    redis.call('DEL', key)
    return nil
  end
  if not h[1] then return nil end
  return h
end
local function expire(key, now, ms)
  redis.call('HSET', key, 'exp', num(now + ms))
  redis.call('PEXPIRE', key, string.format('%.0f', ms))
end
`;

/** KEYS: [1] the key's hash. ARGV: [1] clock, [2] fingerprint, [3] spawnId, [4] pending ms. */
const IDEM_CLAIM_LUA = `${CLOCK}${IDEMPOTENCY}
local now = clock(ARGV[1])
local h = entry(KEYS[1], now)
if not h then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'fp', ARGV[2], 'spawnId', ARGV[3])
  expire(KEYS[1], now, tonumber(ARGV[4]))
  return {'claimed'}
end
if h[2] ~= ARGV[2] then return {'mismatch', h[3]} end
if h[1] == 'done' then return {'done', h[3], h[4]} end
return {'pending', h[3]}
`;

/**
 * KEYS: [1] the key's hash. ARGV: [1] clock, [2] "renew"|"complete"|"abandon", [3] spawnId, [4] ms,
 * [5] result (complete). Acts only on a pending claim of that spawnId; returns 1 when it did.
 */
const IDEM_SETTLE_LUA = `${CLOCK}${IDEMPOTENCY}
local now = clock(ARGV[1])
local h = entry(KEYS[1], now)
if not h or h[1] ~= 'pending' or h[3] ~= ARGV[3] then return 0 end
if ARGV[2] == 'abandon' then
  redis.call('DEL', KEYS[1])
elseif ARGV[2] == 'complete' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[5])
  expire(KEYS[1], now, tonumber(ARGV[4]))
else
  expire(KEYS[1], now, tonumber(ARGV[4]))
end
return 1
`;

/**
 * ARGV: [1] clock, [2] queue prefix, [3] priority, [4] user, [5] limits JSON [[slot, max]…],
 * [6] lease ms, [7] max waiting, [8] meta JSON, [9] random id suffix, [10] max waiting per user.
 * Returns {1, id, position}, or {0, 'queue'|'user'} when the queue or the user's share of it is full.
 */
const QUEUE_JOIN_LUA = `${CLOCK}${QUEUE}
local now = clock(ARGV[1])
local q, tickets, users, state = queueKeys(ARGV[2])
local live = waiters(ARGV[2], now)
if #live >= tonumber(ARGV[7]) then return {0, 'queue'} end
local priority, user, lease = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[6])
local mine = 0
for _, w in ipairs(live) do if w[2].user == user then mine = mine + 1 end end
if mine >= tonumber(ARGV[10]) then return {0, 'user'} end
local served = tonumber(redis.call('HGET', state, 'served') or '0')
local tag = math.max(tonumber(redis.call('HGET', users, user) or '0'), served) + 1
redis.call('HSET', users, user, tag)
local id = string.format('%016d', redis.call('HINCRBY', state, 'seq', 1)) .. '-' .. ARGV[9]
redis.call('ZADD', q, (255 - priority) * 35184372088832 + tag, id)
redis.call('HSET', tickets, id, cjson.encode({p = priority, user = user, tag = tag, limits = cjson.decode(ARGV[5]), exp = num(now + lease), since = num(now), meta = cjson.decode(ARGV[8])}))
for _, key in ipairs({q, tickets, users, state}) do keepFor(key, 2 * lease) end
return {1, id, redis.call('ZRANK', q, id) + 1}
`;

/** ARGV: [1] clock, [2] queue prefix, [3] lease ms, then ticket ids. Returns each one's position, 0 when it no longer waits. */
const QUEUE_TOUCH_LUA = `${CLOCK}${QUEUE}
local now = clock(ARGV[1])
local q, tickets, users, state = queueKeys(ARGV[2])
local live = {}
for i, w in ipairs(waiters(ARGV[2], now)) do live[w[1]] = {i, w[2]} end
local lease = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local w = live[ARGV[i]]
  if w then
    w[2].exp = num(now + lease)
    redis.call('HSET', tickets, ARGV[i], cjson.encode(w[2]))
    out[#out + 1] = w[1]
  else
    out[#out + 1] = 0
  end
end
if #ARGV > 3 then for _, key in ipairs({q, tickets, users, state}) do keepFor(key, 2 * lease) end end
return out
`;

/** ARGV: [1] clock, [2] queue prefix, [3] "leave"|"list", [4] ticket id (leave). */
const QUEUE_READ_LUA = `${CLOCK}${QUEUE}
local live = waiters(ARGV[2], clock(ARGV[1]))
if ARGV[3] == 'leave' then
  for _, w in ipairs(live) do
    if w[1] == ARGV[4] then
      dropTicket(ARGV[2], ARGV[4])
      return 1
    end
  end
  return 0
end
local out = {}
for _, w in ipairs(live) do
  out[#out + 1] = w[1]
  out[#out + 1] = cjson.encode({p = w[2].p, user = w[2].user, since = w[2].since, meta = w[2].meta})
end
return out
`;

interface Script {
  source: string;
  sha: string;
}

const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });
const RESERVE = script(RESERVE_LUA);
const RELEASE = script(RELEASE_LUA);
const RECENT = script(RECENT_LUA);
const RENEW = script(RENEW_LUA);
const COUNTS = script(COUNTS_LUA);
const IDEM_CLAIM = script(IDEM_CLAIM_LUA);
const IDEM_SETTLE = script(IDEM_SETTLE_LUA);
const QUEUE_JOIN = script(QUEUE_JOIN_LUA);
const QUEUE_TOUCH = script(QUEUE_TOUCH_LUA);
const QUEUE_READ = script(QUEUE_READ_LUA);

/** Key layout; docs/stores.md lists it for operators. */
export function redisKeys(prefix: string) {
  return {
    counter: (slot: SlotKey) => `${prefix}slot:${slot}`,
    counterPrefix: `${prefix}slot:`,
    bucket: (slot: SlotKey) => `${prefix}bucket:${slot}`,
    history: (slot: SlotKey) => `${prefix}recent:${slot}`,
    record: (id: string) => `${prefix}reservation:${id}`,
    recordPrefix: `${prefix}reservation:`,
    index: `${prefix}reservations`,
    idempotency: (key: string) => `${prefix}idempotency:${key}`,
    tree: (root: string) => `${prefix}tree:${root}`,
    queue: `${prefix}queue`,
  };
}

function connectionOptions(url: string): { url?: string; path?: string; db?: number; username?: string } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (err) {
    throw new ConfigError('invalid Redis URL', [{ path: 'spawngate.store.url', message: 'must be a URL such as redis://127.0.0.1:6379/0' }], { cause: err });
  }
  if (parsed.protocol === 'redis:' || parsed.protocol === 'rediss:') {
    // ioredis lets credentials parsed from the URL win over explicit options, and a URL with a
    // user but no password would then blank out the password: pass the user separately.
    const username = decodeURIComponent(parsed.username);
    parsed.username = '';
    parsed.password = '';
    return { url: parsed.toString(), ...(username === '' ? {} : { username }) };
  }
  if (parsed.protocol === 'unix:') {
    // ioredis has no unix: scheme; it takes a socket path and a db option.
    const db = parsed.searchParams.get('db');
    return { path: decodeURIComponent(parsed.pathname), ...(db === null ? {} : { db: Number(db) }) };
  }
  throw new ConfigError('unsupported Redis URL scheme', [{ path: 'spawngate.store.url', message: 'must use redis://, rediss:// or unix://' }]);
}

/**
 * `work`, or a timeout error once `ms` have passed and the answer still has not arrived after one
 * more turn of I/O. A plain timer is not enough: when the event loop was blocked (a gateway loading
 * plugins on a busy host), the timers run before the socket is read on the next turn, and an answer
 * that arrived in time would be reported as a timeout.
 */
function withinDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      // setImmediate runs after the poll phase that reads whatever reached the socket meanwhile.
      setImmediate(() => {
        if (settled) return;
        settled = true;
        reject(new Error(`Command timed out after ${ms} ms`));
      });
    }, ms);
    work.then(
      (value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  });
}

function asNumber(value: unknown): number {
  return typeof value === 'number' ? value : Number(value);
}

/**
 * Reservation store shared by every gateway that points at the same Redis (and key prefix).
 * Semantics are the memory store's, key for key; docs/stores.md explains the layout, the
 * atomicity argument and the failure modes. Any Redis failure rejects with a retryable
 * SpawngateError 'RESERVATION_FAILED' — never an allow.
 */
export async function createRedisStore(options: RedisStoreOptions): Promise<ReservationStore> {
  const logger = options.logger ?? silentLogger;
  const keys = redisKeys(options.keyPrefix ?? 'spawngate:');
  const retention = options.recentRetentionMs ?? 10 * 60_000;
  const clockArg = (): string => (options.now ? String(options.now()) : '');
  const ownsClient = options.client === undefined;

  let client: RedisClient;
  let isReplyError: (err: unknown) => boolean = () => false;
  /** Why a call would only wait for a connection that is known to be down; null when it may go ahead. */
  let unavailable: () => string | null = () => null;
  /** How long one store call may take; null for a caller's own client, which sets its own bounds. */
  let callTimeoutMs: number | null = null;
  if (options.client) {
    client = options.client;
  } else {
    if (options.url === undefined) {
      throw new ConfigError('the Redis store needs a url', [{ path: 'spawngate.store.url', message: 'required' }]);
    }
    const target = connectionOptions(options.url);
    const { Redis, ReplyError } = await loadIoredis();
    isReplyError = (err) => err instanceof ReplyError;
    const timeout = options.commandTimeoutMs ?? 5000;
    callTimeoutMs = timeout;
    const settings = {
      ...(target.path === undefined ? {} : { path: target.path }),
      ...(target.db === undefined ? {} : { db: target.db }),
      ...(target.username === undefined ? {} : { username: target.username }),
      ...(options.password === undefined ? {} : { password: options.password }),
      // A reserve must answer within a bound even when Redis is gone: fail it fast (the gateway
      // denies and the caller retries) instead of queueing it behind ioredis' reconnect loop.
      maxRetriesPerRequest: 1,
      // Re-sending a reserve whose answer was lost with the connection could take its slots twice;
      // such a call fails instead, and reserve() undoes it by id (see there).
      autoResendUnfulfilledCommands: false,
      connectTimeout: timeout,
      // Only a backstop that bounds ioredis' queue while a connection hangs: timed() holds each
      // call to `timeout` itself, in a way that an event-loop stall cannot turn into a failure.
      commandTimeout: timeout + Math.max(timeout, 30_000),
    };
    const redis = target.url === undefined ? new Redis(settings) : new Redis(target.url, settings);
    let healthy = true;
    // Without a listener ioredis prints every reconnect failure; log each outage once instead.
    redis.on('error', (err) => {
      if (!healthy) return;
      healthy = false;
      logger.warn('redis reservation store connection failed; reservations fail until it is back', { store: 'redis', error: (err as Error).message });
    });
    redis.on('ready', () => {
      if (healthy) return;
      healthy = true;
      logger.info('redis reservation store connection is back', { store: 'redis' });
    });
    // Between reconnect attempts ioredis would queue a call until the next attempt fails (up to
    // seconds of backoff): during a known outage, answer at once instead.
    unavailable = () => (redis.status === 'reconnecting' || redis.status === 'end' || redis.status === 'close' ? `redis connection is ${redis.status}` : null);
    client = redis;
  }

  /** One Redis command, bounded when this store owns the connection. */
  function timed<T>(command: Promise<T>): Promise<T> {
    return callTimeoutMs === null ? command : withinDeadline(command, callTimeoutMs);
  }

  async function run(s: Script, keyArgs: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    try {
      return await timed(client.evalsha(s.sha, keyArgs.length, ...keyArgs, ...args));
    } catch (err) {
      // NOSCRIPT is Redis' error code (the reply's first word) for a script cache that does not
      // hold this script yet, e.g. after a restart or SCRIPT FLUSH; EVAL runs and caches it.
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      return timed(client.eval(s.source, keyArgs.length, ...keyArgs, ...args));
    }
  }

  function failed(operation: string, err: unknown): SpawngateError {
    if (err instanceof SpawngateError) return err;
    return new SpawngateError('RESERVATION_FAILED', `redis reservation store: ${operation} failed: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
      retryable: true,
      details: { store: 'redis', operation },
    });
  }

  /** Every store call: fails fast during a known outage, and turns any failure into RESERVATION_FAILED. */
  async function guarded<T>(operation: string, body: () => Promise<T>): Promise<T> {
    const down = unavailable();
    if (down !== null) throw failed(operation, new Error(down));
    try {
      return await body();
    } catch (err) {
      throw failed(operation, err);
    }
  }

  function scriptArgs(mode: 'reserve' | 'check', request: Omit<ReservationRequest, 'spawnId'> & { spawnId?: string }, id: string) {
    if (request.leaseMs !== undefined && !(Number.isInteger(request.leaseMs) && request.leaseMs > 0)) throw new RangeError(`leaseMs must be a positive integer, got ${request.leaseMs}`);
    const slots = [...new Set(request.concurrency.map((l) => slotKey(l.scope, l.key)))];
    const history = [...new Set([...slots, ...request.rate.map((l) => slotKey(l.scope, l.key))])];
    const keyArgs = [
      keys.index,
      keys.record(id),
      ...request.concurrency.map((l) => keys.counter(slotKey(l.scope, l.key))),
      ...request.rate.map((l) => keys.bucket(slotKey(l.scope, l.key))),
      ...(mode === 'reserve' ? history.map((k) => keys.history(k)) : []),
      ...(request.tree ? [keys.tree(request.tree.budget.root)] : []),
    ];
    const tree = request.tree;
    if (tree && !(Number.isSafeInteger(tree.chargeMs) && tree.chargeMs >= 0)) throw new RangeError(`tree chargeMs must be a whole number of ms, got ${tree.chargeMs}`);
    const args = [
      mode,
      clockArg(),
      request.concurrency.length,
      request.rate.length,
      mode === 'reserve' ? history.length : 0,
      retention,
      id,
      request.spawnId ?? '',
      JSON.stringify(slots),
      JSON.stringify({ ...request.meta }),
      request.holder ?? '',
      request.leaseMs === undefined ? '' : String(request.leaseMs),
      keys.recordPrefix,
      keys.counterPrefix,
      keys.queue,
      request.ticket ?? '',
      ...request.concurrency.map((l) => String(l.max)),
      ...request.rate.flatMap((l) => [String(l.perMinute), String(l.burst)]),
      ...(tree
        ? [
            tree.budget.maxSpawns ?? -1,
            tree.budget.maxWorkerSeconds === null ? -1 : tree.budget.maxWorkerSeconds * 1000,
            tree.chargeMs,
            tree.budget.windowSeconds * 1000,
          ].map(String)
        : []),
    ];
    return { slots, keyArgs, args };
  }

  function rejection(request: Omit<ReservationRequest, 'spawnId'>, reply: unknown[]): ReserveRejection {
    const kind = asNumber(reply[1]);
    const index = asNumber(reply[2]) - 1;
    const value = asNumber(reply[3]);
    if (kind === 1) {
      const limit = request.concurrency[index];
      if (limit) return { ok: false, kind: 'concurrency', code: `concurrency_limit_${limit.scope}`, scope: limit.scope, key: limit.key, max: limit.max, active: value };
    } else if (kind === 2) {
      const limit = request.rate[index];
      if (limit) {
        return { ok: false, kind: 'rate', code: `rate_limit_${limit.scope}`, scope: limit.scope, key: limit.key, perMinute: limit.perMinute, burst: limit.burst, retryAfterMs: value };
      }
    } else if (kind === 4) {
      const limit = request.concurrency[index];
      // The slot may be free: it is held for the waiters ahead.
      if (limit) return { ok: false, kind: 'concurrency', code: `concurrency_limit_${limit.scope}`, scope: limit.scope, key: limit.key, max: limit.max, active: asNumber(reply[4]), waitingAhead: value };
    } else if (kind === 3 && request.tree) {
      const { budget, chargeMs } = request.tree;
      if (index === 0 && budget.maxSpawns !== null) return { ok: false, kind: 'tree', code: 'tree_spawns_exhausted', root: budget.root, max: budget.maxSpawns, used: value, needed: 1 };
      if (index === 1 && budget.maxWorkerSeconds !== null) {
        return { ok: false, kind: 'tree', code: 'tree_worker_seconds_exhausted', root: budget.root, max: budget.maxWorkerSeconds, used: Math.ceil(value / 1000), needed: Math.ceil(chargeMs / 1000) };
      }
    }
    throw new Error(`unexpected reply from the reserve script: ${JSON.stringify(reply)}`);
  }

  async function releaseScript(id: string): Promise<boolean> {
    return asNumber(await run(RELEASE, [keys.record(id), keys.index], [keys.counterPrefix, id, clockArg(), keys.recordPrefix])) === 1;
  }

  const settle = async (key: string, action: 'renew' | 'complete' | 'abandon', spawnId: string, ms: number, result = ''): Promise<boolean> =>
    asNumber(await run(IDEM_SETTLE, [keys.idempotency(key)], [clockArg(), action, spawnId, ms, result])) === 1;
  const idempotency: IdempotencyStore = {
    claim: (key, fingerprint, spawnId, pendingMs) =>
      guarded('idempotency claim', async (): Promise<IdempotencyClaim> => {
        const reply = (await run(IDEM_CLAIM, [keys.idempotency(key)], [clockArg(), fingerprint, spawnId, pendingMs])) as unknown[];
        const [state, holder = '', result = ''] = reply.map(String);
        if (state === 'claimed') return { state };
        if (state === 'done') return { state, spawnId: holder, result };
        if (state === 'pending' || state === 'mismatch') return { state, spawnId: holder };
        throw new Error(`unexpected idempotency claim reply ${JSON.stringify(reply)}`);
      }),
    renew: (key, spawnId, pendingMs) => guarded('idempotency renew', () => settle(key, 'renew', spawnId, pendingMs)),
    complete: (key, spawnId, result, windowMs) => guarded('idempotency complete', () => settle(key, 'complete', spawnId, windowMs, result)),
    abandon: (key, spawnId) => guarded('idempotency abandon', async () => void (await settle(key, 'abandon', spawnId, 0))),
  };

  const queue: WaitQueue = {
    join: (request) =>
      guarded('queue join', async () => {
        const limits = JSON.stringify(request.concurrency.map((l) => [slotKey(l.scope, l.key), l.max]));
        const reply = (await run(QUEUE_JOIN, [keys.queue], [clockArg(), keys.queue, request.priority, request.user, limits, request.leaseMs, request.maxWaiting, JSON.stringify({ ...request.meta }), randomUUID().slice(0, 8), request.maxWaitingPerUser])) as unknown[];
        if (asNumber(reply[0]) === 1) return { id: String(reply[1]), position: asNumber(reply[2]) };
        return { full: reply[1] === 'user' ? 'user' : 'queue' };
      }),
    touch: (ids, leaseMs) =>
      guarded('queue touch', async () => {
        const reply = (await run(QUEUE_TOUCH, [keys.queue], [clockArg(), keys.queue, leaseMs, ...ids])) as unknown[];
        return new Map(ids.map((id, i) => [id, asNumber(reply[i] ?? 0) || null]));
      }),
    leave: (id) => guarded('queue leave', async () => asNumber(await run(QUEUE_READ, [keys.queue], [clockArg(), keys.queue, 'leave', id])) === 1),
    list: () =>
      guarded('queue list', async () => {
        const reply = ((await run(QUEUE_READ, [keys.queue], [clockArg(), keys.queue, 'list', ''])) as unknown[]).map(String);
        const out: WaitingTicket[] = [];
        for (let i = 0; i + 1 < reply.length; i += 2) {
          const t = JSON.parse(reply[i + 1] ?? '{}') as { p: number; user: string; since: string; meta: Record<string, string> | unknown[] };
          // cjson writes an empty object as [].
          out.push({ id: reply[i] ?? '', position: i / 2 + 1, priority: t.p, user: t.user, since: Number(t.since), meta: Array.isArray(t.meta) ? {} : t.meta });
        }
        return out;
      }),
  };

  return {
    kind: 'redis',
    idempotency,
    queue,

    reserve: (request) =>
      guarded('reserve', async (): Promise<ReserveOutcome> => {
        const id = randomUUID();
        const { slots, keyArgs, args } = scriptArgs('reserve', request, id);
        let reply: unknown[];
        try {
          reply = (await run(RESERVE, keyArgs, args)) as unknown[];
        } catch (err) {
          // A timeout or a dropped connection leaves it unknown whether the script ran. The release
          // goes out on the same connection after it, so if the reserve did land it is undone; if
          // Redis is unreachable both fail and the record stays visible to active() for the sweeper.
          if (!isReplyError(err)) await releaseScript(id).catch(() => false);
          throw err;
        }
        if (asNumber(reply[0]) !== 1) return rejection(request, reply);
        const leaseExpiresAt = asNumber(reply[2]);
        const record: ReservationRecord = {
          id,
          spawnId: request.spawnId,
          holder: request.holder ?? '',
          slots,
          createdAt: asNumber(reply[1]),
          leaseExpiresAt: leaseExpiresAt < 0 ? null : leaseExpiresAt,
          meta: { ...request.meta },
        };
        if (request.tree) record.tree = { root: request.tree.budget.root, spawns: asNumber(reply[3] ?? 0), workerSeconds: Math.ceil(asNumber(reply[4] ?? 0) / 1000) };
        return { ok: true, record };
      }),

    check: (request) =>
      guarded('check', async () => {
        const { keyArgs, args } = scriptArgs('check', request, randomUUID());
        const reply = (await run(RESERVE, keyArgs, args)) as unknown[];
        return asNumber(reply[0]) === 1 ? { ok: true as const } : rejection(request, reply);
      }),

    async release(id) {
      const freed = await guarded('release', () => releaseScript(id));
      if (!freed) logger.warn('release of unknown or already released reservation ignored', { reservationId: id, store: 'redis' });
      return freed;
    },

    renew: (ids, leaseMs) =>
      guarded('renew', async () => {
        if (!(Number.isInteger(leaseMs) && leaseMs > 0)) throw new RangeError(`leaseMs must be a positive integer, got ${leaseMs}`);
        const held = (await run(RENEW, [keys.index], [clockArg(), leaseMs, keys.recordPrefix, keys.counterPrefix, ...ids])) as unknown[];
        return new Set(held.map(String));
      }),

    counts: (slotKeys) =>
      guarded('counts', async () => {
        if (slotKeys.length === 0) return new Map<SlotKey, number>();
        const values = (await run(COUNTS, [keys.index, ...slotKeys.map((k) => keys.counter(k))], [clockArg(), keys.recordPrefix, keys.counterPrefix])) as unknown[];
        return new Map(slotKeys.map((k, i) => [k, asNumber(values[i] ?? 0)]));
      }),

    recent: (slotKeys, windowMs) =>
      guarded('recent', async () => {
        if (slotKeys.length === 0) return new Map<SlotKey, number>();
        const values = (await run(RECENT, slotKeys.map((k) => keys.history(k)), [clockArg(), windowMs, retention])) as unknown[];
        return new Map(slotKeys.map((k, i) => [k, asNumber(values[i] ?? 0)]));
      }),

    active: () =>
      guarded('active', async () => {
        // Lapsed leases are freed first, so what is listed is what holds slots now.
        await run(COUNTS, [keys.index], [clockArg(), keys.recordPrefix, keys.counterPrefix]);
        const ids = await timed(client.zrange(keys.index, 0, -1));
        const hashes = await timed(Promise.all(ids.map((id) => client.hgetall(keys.record(id)))));
        const records: ReservationRecord[] = [];
        ids.forEach((id, i) => {
          const h = hashes[i];
          // Released between the two reads: it is no longer active.
          if (!h || h['slots'] === undefined) return;
          records.push({
            id,
            spawnId: h['spawnId'] ?? '',
            holder: h['holder'] ?? '',
            slots: JSON.parse(h['slots']) as SlotKey[],
            createdAt: Number(h['createdAt']),
            leaseExpiresAt: h['leaseExpiresAt'] === undefined || Number(h['leaseExpiresAt']) < 0 ? null : Number(h['leaseExpiresAt']),
            meta: JSON.parse(h['meta'] ?? '{}') as Record<string, string>,
          });
        });
        return records;
      }),

    async close() {
      if (!ownsClient) return;
      try {
        await client.quit();
      } catch {
        // QUIT cannot reach a Redis that is down; dropping the socket is all that is left to do.
        client.disconnect();
      }
    },
  };
}
