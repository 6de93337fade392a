/** Pure helpers of the memcached store: TTLs in memcached's terms, and the parts of a stored value it reads. */
import type { StoreOutage } from '../core/errors.js';
import { McReplyError } from './memcached-client.js';
import type { SharedFailure } from './store.js';

/** memcached reads a larger exptime as a Unix time, not a TTL. */
const MAX_RELATIVE_TTL_S = 2_592_000;

/**
 * memcached counts expiry in whole seconds on a clock that ticks once a second, so an item set with N seconds lives
 * between N-1 and N seconds. Rounded up, a value may outlive its TTL by up to a second (a reader still checks the
 * token's own expiry); never 0, which would mean "never expires"; at most 30 days (grant state asks for exactly that).
 */
export function ttlSeconds(ttlMs: number): number {
  return Math.min(MAX_RELATIVE_TTL_S, Math.max(1, Math.ceil(ttlMs / 1000)));
}

/** A lock lease in memcached seconds: one more than the lease rounded up, since an N-second item may end after N-1. */
export function lockTtlSeconds(leaseMs: number): number {
  return Math.ceil(leaseMs / 1000) + 1;
}

/** The outer fields of a stored token (readable without the key, as the Redis scripts read them). */
export function outerOf(text: string): { iat: number | undefined; fp: string | undefined } | undefined {
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v !== 'object' || v === null) return undefined;
    const { iat, fp } = v as Record<string, unknown>;
    return { iat: typeof iat === 'number' && Number.isFinite(iat) ? iat : undefined, fp: typeof fp === 'string' ? fp : undefined };
  } catch {
    return undefined;
  }
}

/** The Redis store's failure marker, same format (redis-client.ts has the same parser; importing it would load ioredis). */
export function encodeFailure(failure: SharedFailure): string {
  return JSON.stringify({ v: 1, kind: failure.kind, msg: failure.message.slice(0, 300), until: failure.untilMs });
}

export function parseFailure(text: string | undefined): SharedFailure | undefined {
  if (text === undefined) return undefined;
  try {
    const { kind, msg, until } = JSON.parse(text) as Record<string, unknown>;
    if ((kind !== 'rejected' && kind !== 'unavailable') || typeof msg !== 'string' || typeof until !== 'number' || !Number.isFinite(until)) return undefined;
    return { kind, message: msg, untilMs: until };
  } catch {
    return undefined;
  }
}

/** A failed call: the server refused it (`error`), or there was no connection or it closed (`down`). */
export function outageOf(op: string, err: unknown): StoreOutage {
  const message = err instanceof Error ? err.message : String(err);
  return { op, reason: err instanceof McReplyError ? 'error' : 'down', message };
}
