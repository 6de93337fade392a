/**
 * The Lua scripts of the Redis store, each named, each atomic on the server. A token key and its lock key share a
 * hash tag, so in a Cluster every script touches one slot. Run with EVALSHA, falling back to EVAL once per
 * server that has not seen the script yet (NOSCRIPT), as ioredis' defineCommand does.
 */
import { createHash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';

export interface LuaScript {
  readonly name: string;
  readonly lua: string;
  readonly sha: string;
  readonly keys: number;
}

function script(name: string, keys: number, lua: string): LuaScript {
  return { name, lua, keys, sha: createHash('sha1').update(lua).digest('hex') };
}

/**
 * token_put_newer: write a token unless a fresher one is already shared ("newer wins"), clear the shared failure,
 * then announce it.
 * KEYS[1] token key · KEYS[2] failure key · ARGV[1] value · ARGV[2] issued-at ms · ARGV[3] TTL ms · ARGV[4] channel · ARGV[5] message
 */
export const TOKEN_PUT_NEWER = script('token_put_newer', 2, `
local current = redis.call('GET', KEYS[1])
if current then
  -- An unreadable value is overwritten; a readable one wins only if it was issued later than ours.
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and tonumber(decoded.iat) and tonumber(decoded.iat) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
`);

/**
 * read_or_lock: the shared token and failure marker, and, when there is no failure marker and no token (or only the
 * token being refreshed: issued at or before ARGV[3]), the refresh lock taken in the same step. Atomic, so the holder
 * needs no second read under the lock: one round trip where a read, a lock and a re-read took three, which is what a
 * slow Redis makes count.
 * KEYS[1] token key · KEYS[2] failure key · KEYS[3] lock key · ARGV[1] owner · ARGV[2] lease ms · ARGV[3] issued-at ms
 * at or before which a token is stale (-1: only a missing token is)
 * Returns { token value or nil, failure value or nil, 1 when the lock was taken else 0, 1 when the lock is held }.
 */
export const READ_OR_LOCK = script('read_or_lock', 3, `
local token = redis.call('GET', KEYS[1])
local failure = redis.call('GET', KEYS[2])
local locked = 0
if not failure then
  local stale = not token
  local atOrBefore = tonumber(ARGV[3])
  if token and atOrBefore and atOrBefore >= 0 then
    -- An unreadable value counts as stale; a readable one only if it is not newer than the token being refreshed.
    local ok, decoded = pcall(cjson.decode, token)
    stale = not (ok and type(decoded) == 'table' and tonumber(decoded.iat) and tonumber(decoded.iat) > atOrBefore)
  end
  if stale and redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2], 'NX') then locked = 1 end
end
local held = 0
if locked == 1 or redis.call('EXISTS', KEYS[3]) == 1 then held = 1 end
return { token, failure, locked, held }
`);

/**
 * failure_put: remember a failed refresh for the backoff period and wake the waiting pods.
 * KEYS[1] failure key · ARGV[1] value · ARGV[2] TTL ms · ARGV[3] channel · ARGV[4] message
 */
export const FAILURE_PUT = script('failure_put', 1, `
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
`);

/**
 * token_invalidate: delete the shared token only if it is still the one that failed (by fingerprint), and announce
 * it, so a pod that already refreshed is never undone by a late 401.
 * KEYS[1] token key · ARGV[1] fingerprint · ARGV[2] channel · ARGV[3] message
 */
export const TOKEN_INVALIDATE = script('token_invalidate', 1, `
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, decoded = pcall(cjson.decode, current)
if not (ok and type(decoded) == 'table' and decoded.fp == ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
`);

/**
 * delete_if_equals: compare-and-delete on the exact value. Releases a lock only for its owner (a holder whose lease
 * expired must not delete the next holder's lock), and removes an unreadable token value only if it is unchanged.
 * KEYS[1] key · ARGV[1] expected value
 */
export const DELETE_IF_EQUALS = script('delete_if_equals', 1, `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`);

/**
 * lock_renew: extend the lease only while we still own it.
 * KEYS[1] lock key · ARGV[1] owner value · ARGV[2] lease ms
 */
export const LOCK_RENEW = script('lock_renew', 1, `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`);

export async function runScript(client: Redis | Cluster, s: LuaScript, keys: string[], args: (string | number)[]): Promise<unknown> {
  try {
    return await client.evalsha(s.sha, s.keys, ...keys, ...args);
  } catch (err) {
    if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
    return client.eval(s.lua, s.keys, ...keys, ...args);
  }
}
