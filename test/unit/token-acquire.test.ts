/** The fleet protocol (tokens/acquire.ts) on the real memory store, with store answers altered where a case needs it. */
import { describe, expect, it } from 'vitest';
import { TokenEndpointError, type StoreOutage } from '../../src/core/errors.js';
import { makeToken, type Token } from '../../src/core/token.js';
import { MemoryStore } from '../../src/store/memory.js';
import type { SharedFailure, TokenStore } from '../../src/store/store.js';
import { acquire, type AcquireDeps, type Fetched } from '../../src/tokens/acquire.js';
import { ok } from '../helpers/stored.js';

const KEY = 'k'.repeat(32);
let n = 0;
const token = (issuedAtMs = Date.now()): Token =>
  makeToken({ value: `tok-${++n}`, tokenType: 'Bearer', issuedAtMs, expiresAtMs: issuedAtMs + 60_000, scope: undefined, lifetimeSource: 'expires_in' });

interface Run {
  deps: AcquireDeps;
  fetches: number;
  lookups: boolean[];
  outages: StoreOutage[];
}

/** Deps that accept any usable token (or only those `accepts` allows) and fetch `fetched` (a fresh token by default). */
function run(store: TokenStore, over: Partial<AcquireDeps> & { fetched?: () => Promise<Fetched> } = {}): Run {
  const r: Run = { fetches: 0, lookups: [], outages: [], deps: undefined as unknown as AcquireDeps };
  r.deps = {
    store,
    key: KEY,
    nowMs: Date.now,
    coordinationTimeoutMs: 1_000,
    lockWaitTimeoutMs: 1_000,
    pollIntervalMs: 10,
    staleAtOrBeforeMs: undefined,
    accepts: (t): t is Token => t !== undefined && t.expiresAtMs > Date.now(),
    backsOff: (f): f is SharedFailure => f !== undefined && f.untilMs > Date.now(),
    fetch: async () => {
      r.fetches++;
      return over.fetched ? over.fetched() : { ok: true, token: token(), durationMs: 1 };
    },
    lookedUp: (hit) => r.lookups.push(hit),
    outage: (o) => r.outages.push(o),
    ...over,
  };
  return r;
}

/** The memory store with some answers replaced. */
function altered(store: MemoryStore, replace: Partial<TokenStore>): TokenStore {
  return new Proxy(store, {
    get: (target, prop) => {
      if (prop in replace) return replace[prop as keyof TokenStore];
      const value: unknown = Reflect.get(target, prop, target);
      // The store's methods use private fields: call them on the store itself.
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  }) as TokenStore;
}

const outage = (op: string): StoreOutage => ({ op, reason: 'timeout', message: 'Command timed out' });

describe('acquire', () => {
  it('cold: the read takes the lock, one fetch, the token is shared and the lock released', async () => {
    const store = new MemoryStore();
    const r = run(store);
    const got = await acquire(r.deps);
    expect(got.via).toBe('fetched');
    if (got.via !== 'fetched') return;
    expect(await got.shared).toBe(true);
    expect(r).toMatchObject({ fetches: 1, lookups: [false], outages: [] });
    expect(ok(await store.get(KEY))?.fingerprint).toBe(got.token.fingerprint);
    expect(ok(await store.tryLock(KEY))).toBeDefined(); // released
  });

  it('a usable shared token spares the fetch', async () => {
    const store = new MemoryStore();
    const shared = token();
    await store.put(KEY, shared);
    const r = run(store);
    expect(await acquire(r.deps)).toEqual({ via: 'store', token: shared, waitedMs: undefined });
    expect(r).toMatchObject({ fetches: 0, lookups: [true] });
  });

  it("another pod's recent failure: back off with it, no fetch", async () => {
    const store = new MemoryStore();
    const failure = { kind: 'unavailable' as const, message: 'down', untilMs: Date.now() + 5_000 };
    await store.putFailure(KEY, failure);
    const r = run(store);
    expect(await acquire(r.deps)).toEqual({ via: 'backoff', failure });
    expect(r.fetches).toBe(0);
  });

  it("waits for the lock holder's token instead of fetching", async () => {
    const store = new MemoryStore();
    const held = ok(await store.tryLock(KEY));
    const r = run(store);
    const landed = token();
    setTimeout(() => void store.put(KEY, landed), 40);
    const got = await acquire(r.deps);
    expect(got).toMatchObject({ via: 'store', token: landed });
    expect(got.via === 'store' && got.waitedMs !== undefined && got.waitedMs >= 30).toBe(true);
    expect(r.fetches).toBe(0);
    await held?.release();
  });

  it('gives up waiting after lockWaitTimeoutMs: the caller fetches alone', async () => {
    const store = new MemoryStore();
    await store.tryLock(KEY); // a holder that never finishes
    const r = run(store, { lockWaitTimeoutMs: 50 });
    const startedMs = Date.now();
    expect(await acquire(r.deps)).toEqual({ via: 'alone', why: 'lock_wait_timeout' });
    expect(Date.now() - startedMs).toBeGreaterThanOrEqual(45);
    expect(r.fetches).toBe(0);
  });

  it('a token present but not good enough: lock, read again under it, and take what landed in between', async () => {
    const store = new MemoryStore();
    const old = token();
    await store.put(KEY, old);
    const landed = token();
    // Not the one we have: what a refresh-ahead says of a token that is due.
    const accepts = (t: Token | undefined): t is Token => t !== undefined && t !== old;
    const r = run(
      altered(store, {
        tryLock: async (key) => {
          const lock = await store.tryLock(key);
          await store.put(KEY, landed); // another pod wrote just before our lock
          return lock;
        },
      }),
      { accepts },
    );
    expect(await acquire(r.deps)).toEqual({ via: 'store', token: landed, waitedMs: undefined });
    expect(r.fetches).toBe(0);
    expect(ok(await store.tryLock(KEY))).toBeDefined(); // released
  });

  it('a failed fetch under the lock tells the fleet and releases the lock', async () => {
    const store = new MemoryStore();
    const error = new TokenEndpointError('unavailable', 'down', { retryAfterMs: 2_000 });
    const failure = { kind: 'unavailable' as const, message: 'down', untilMs: Date.now() + 2_000 };
    const r = run(store, { fetched: async () => ({ ok: false, error, failure }) });
    expect(await acquire(r.deps)).toEqual({ via: 'failed', error });
    expect(ok(await store.read(KEY)).failure).toEqual(failure);
    expect(ok(await store.tryLock(KEY))).toBeDefined();
  });

  it('a store that does not answer: alone, with the outage, and nothing else is tried', async () => {
    const store = new MemoryStore();
    let locks = 0;
    const r = run(
      altered(store, {
        readOrLock: async () => ({ ok: false, outage: outage('get') }),
        tryLock: async (key) => (locks++, store.tryLock(key)),
      }),
    );
    expect(await acquire(r.deps)).toEqual({ via: 'alone', why: outage('get') });
    expect(locks).toBe(0);
    expect(r.fetches).toBe(0);
  });

  it('a failed write after the fetch is reported, the lock still released, the token still used', async () => {
    const store = new MemoryStore();
    const r = run(altered(store, { put: async () => ({ ok: false, outage: outage('put') }) }));
    const got = await acquire(r.deps);
    expect(got.via).toBe('fetched');
    if (got.via === 'fetched') expect(await got.shared).toBe(false);
    expect(r.outages).toEqual([outage('put')]);
    expect(ok(await store.tryLock(KEY))).toBeDefined();
  });

  it('a value sealed under a key this pod lacks: alone, and the value is not overwritten', async () => {
    const store = new MemoryStore();
    const foreign = altered(store, { readOrLock: async () => ({ ok: true, value: { token: undefined, failure: undefined, unreadable: 'foreign', lock: undefined, lockHeld: false } }) });
    const r = run(foreign);
    expect(await acquire(r.deps)).toEqual({ via: 'alone', why: 'foreign_key' });
    expect(r.fetches).toBe(0);
  });

  it('the first round shares one budget of store time: each call gets what is left, none starts once it is spent', async () => {
    const store = new MemoryStore();
    await store.put(KEY, token()); // there, but of no use to this caller: it must lock and read again
    const given: (number | undefined)[] = [];
    const slow = <T>(ms: number, answer: () => Promise<T>) => async (timeoutMs?: number): Promise<T> => {
      given.push(timeoutMs);
      await new Promise((resolve) => setTimeout(resolve, ms));
      return answer();
    };
    const r = run(
      altered(store, {
        readOrLock: (key, opts) => slow(40, () => store.readOrLock(key))(opts?.timeoutMs),
        tryLock: (key, opts) => slow(40, () => store.tryLock(key))(opts?.timeoutMs),
        read: (key, opts) => slow(0, () => store.read(key))(opts?.timeoutMs),
      }),
      { coordinationTimeoutMs: 70, accepts: (_t): _t is Token => false },
    );
    const got = await acquire(r.deps);
    expect(got).toEqual({ via: 'alone', why: { op: 'get', reason: 'timeout', message: 'the coordination deadline passed' } });
    expect(given[0]).toBe(70);
    expect(given[1]).toBeLessThanOrEqual(32);
    expect(given).toHaveLength(2); // the read again under the lock never started
    expect(r.fetches).toBe(0);
    expect(ok(await store.tryLock(KEY))).toBeDefined(); // the lock it took was released
  });

  it('a refresh of the token the store still holds takes the lock in the same round trip', async () => {
    const store = new MemoryStore();
    const mine = token();
    await store.put(KEY, mine);
    let locks = 0;
    const r = run(
      altered(store, { tryLock: async (key) => (locks++, store.tryLock(key)) }),
      { staleAtOrBeforeMs: mine.issuedAtMs, accepts: (t): t is Token => t !== undefined && t.issuedAtMs > mine.issuedAtMs },
    );
    const got = await acquire(r.deps);
    expect(got.via).toBe('fetched');
    expect(locks).toBe(0);
    expect(r.fetches).toBe(1);
  });
});

