import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import type { OAuth2Auth, Route } from '../../src/config/types.js';
import { createLogger } from '../../src/log.js';
import type { TokenFetcher } from '../../src/oauth/client.js';
import { TokenEndpointError } from '../../src/core/errors.js';
import { MemoryStore } from '../../src/store/memory.js';
import { TokenManager, type TokenObserver } from '../../src/tokens/manager.js';
import { REJECTED_CACHE_MS, UNAUTHORIZED_REFRESH_INTERVAL_MS } from '../../src/tokens/policy.js';
import { makeToken, type Token } from '../../src/core/token.js';
import { ManualClock, settle } from '../helpers/clock.js';
import { capturingDestination } from '../helpers/log-capture.js';

const T0 = 1_800_000_000_000;
const LIFETIME_MS = 100_000; // refreshAhead 20% with random() = 0: refresh due 20 s before expiry; skew 5 s

/** The manager's clock and timers, handed in: nothing runs behind the test's back. */
let clock: ManualClock;

class Deferred {
  resolve!: () => void;
  readonly promise = new Promise<void>((r) => (this.resolve = r));
}

/** A scriptable TokenFetcher: counts calls, issues tok-1, tok-2, …, can be held open, can fail. */
class FakeFetcher implements TokenFetcher {
  calls = 0;
  lifetimeMs = LIFETIME_MS;
  gate: Deferred | undefined;
  readonly failures: Error[] = [];
  failAlways: (() => Error) | undefined;
  readonly issued: Token[] = [];

  async fetchToken(routeName: string, _auth: OAuth2Auth): Promise<Token> {
    this.calls += 1;
    const n = this.calls;
    const issuedAtMs = clock.nowMs;
    if (this.gate) await this.gate.promise;
    const failure = this.failures.shift() ?? this.failAlways?.();
    if (failure) throw failure;
    const token = makeToken({
      value: `tok-${n}-${routeName}`,
      tokenType: 'Bearer',
      issuedAtMs,
      expiresAtMs: issuedAtMs + this.lifetimeMs,
      scope: undefined,
      lifetimeSource: 'expires_in',
    });
    this.issued.push(token);
    return token;
  }
}

const unavailable = (opts: { retryAfterMs?: number } = {}) =>
  new TokenEndpointError('unavailable', 'token endpoint answered 500 with a text/html body', { route: 'pix', httpStatus: 500, ...opts });
const rejected = () => new TokenEndpointError('rejected', 'token endpoint refused the request: invalid_client', { route: 'pix', oauthError: 'invalid_client', httpStatus: 401 });

let routes: Route[];
let fetcher: FakeFetcher;
let manager: TokenManager;
let logLines: string[];

async function loadRoutes(): Promise<Route[]> {
  const loaded = await loadConfigText(`version: 1
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: https://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://auth.vendor.example/oauth/token
      clientId: pix-client
      clientSecret: pix-secret
      refreshAhead: 20%
`);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  return loaded.config.routes;
}

beforeEach(async () => {
  clock = new ManualClock(T0);
  routes ??= await loadRoutes();
  fetcher = new FakeFetcher();
  logLines = [];
  manager = newManager();
  manager.setRoutes(routes);
});

/** A manager on the test's clock, store, fetcher and log lines. */
function newManager(observer?: TokenObserver): TokenManager {
  return new TokenManager({
    store: new MemoryStore(clock.now),
    fetcher,
    log: createLogger({ level: 'debug', destination: capturingDestination(logLines) }),
    now: clock.now,
    timers: clock,
    random: () => 0,
    ...(observer ? { observer } : {}),
  });
}

afterEach(() => {
  manager.close();
});

async function rejection(p: Promise<unknown>): Promise<TokenEndpointError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof TokenEndpointError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

describe('single-flight', () => {
  it('200 concurrent cold gets make one fetch and all get the same token', async () => {
    fetcher.gate = new Deferred();
    const all = Array.from({ length: 200 }, () => manager.get('pix'));
    expect(manager.current('pix')).toBeUndefined();
    fetcher.gate.resolve();
    const results = await Promise.all(all);
    expect(fetcher.calls).toBe(1);
    expect(new Set(results.map((r) => r.token.fingerprint)).size).toBe(1);
    expect(results.every((r) => r.source === 'fetched')).toBe(true);
    // And then from memory, without a fetch.
    expect((await manager.get('pix')).source).toBe('memory');
    expect(manager.current('pix')?.fingerprint).toBe(results[0]?.token.fingerprint);
    expect(fetcher.calls).toBe(1);
  });

  it('200 concurrent gets that all fail make one fetch and all see the error', async () => {
    fetcher.gate = new Deferred();
    fetcher.failures.push(unavailable());
    const all = Array.from({ length: 200 }, () => manager.get('pix').then(() => 'ok', (e: unknown) => (e as TokenEndpointError).code));
    fetcher.gate.resolve();
    expect(new Set(await Promise.all(all))).toEqual(new Set(['TOKEN_UNAVAILABLE']));
    expect(fetcher.calls).toBe(1);
  });
});

describe('refresh-ahead', () => {
  it('serves the old token while exactly one background refresh runs, then the new one', async () => {
    const first = (await manager.get('pix')).token;
    clock.nowMs = T0 + LIFETIME_MS - 20_001; // not yet due
    expect(manager.current('pix')).toBe(first);
    await settle();
    expect(fetcher.calls).toBe(1);

    clock.nowMs = T0 + LIFETIME_MS - 19_000; // due: 20 s before expiry
    fetcher.gate = new Deferred();
    for (let i = 0; i < 50; i++) {
      expect(manager.current('pix')).toBe(first);
      expect((await manager.get('pix')).token).toBe(first);
    }
    expect(fetcher.calls).toBe(2);
    fetcher.gate.resolve();
    await settle();
    const second = manager.current('pix');
    expect(second?.fingerprint).toBe(fetcher.issued[1]?.fingerprint);
    expect(second?.fingerprint).not.toBe(first.fingerprint);
    expect(fetcher.calls).toBe(2);
    expect(logLines.some((l) => l.includes('"event":"token.refreshed"') && l.includes(second?.fingerprint ?? '-'))).toBe(true);
  });

  it('a failed refresh keeps serving the still-valid token and retries only after the backoff', async () => {
    const first = (await manager.get('pix')).token;
    clock.nowMs = T0 + LIFETIME_MS - 19_000;
    fetcher.failAlways = () => unavailable();
    expect(manager.current('pix')).toBe(first);
    await settle();
    expect(fetcher.calls).toBe(2);
    expect(manager.state('pix')?.consecutiveFailures).toBe(1);
    // Backoff after one failure: 1 s × (0.5 + 0.5 × random()) = 500 ms.
    clock.nowMs += 499;
    expect((await manager.get('pix')).token).toBe(first);
    await settle();
    expect(fetcher.calls).toBe(2);
    clock.nowMs += 1;
    expect((await manager.get('pix')).token).toBe(first);
    await settle();
    expect(fetcher.calls).toBe(3);
    expect(logLines.filter((l) => l.includes('"event":"token.fetch_failed"'))).toHaveLength(2);
  });

  it('never returns an expired token: it stops being served expiry-skew before expiresAt', async () => {
    const first = (await manager.get('pix')).token;
    fetcher.failAlways = () => unavailable();
    clock.nowMs = first.expiresAtMs - 5_001;
    expect(manager.current('pix')).toBe(first);
    await settle();
    clock.nowMs = first.expiresAtMs - 5_000;
    expect(manager.current('pix')).toBeUndefined();
    const err = await rejection(manager.get('pix'));
    expect(err.code).toBe('TOKEN_UNAVAILABLE');
    expect(err.retryAfterS).toBeGreaterThanOrEqual(1);
    clock.nowMs = first.expiresAtMs + 60_000;
    expect(manager.current('pix')).toBeUndefined();
    const late = await manager.get('pix').then((r) => r.token, (e: unknown) => e);
    expect(late).not.toBe(first);
    expect(manager.state('pix')?.fingerprint).toBeUndefined();
  });
});

describe('backoff', () => {
  it('honours retryAfterMs from the token endpoint', async () => {
    fetcher.failures.push(unavailable({ retryAfterMs: 7_000 }));
    const err = await rejection(manager.get('pix'));
    expect(err.code).toBe('TOKEN_UNAVAILABLE');
    expect(err.retryAfterMs).toBe(7_000);
    expect(err.retryAfterS).toBe(7);
    expect(fetcher.calls).toBe(1);

    clock.nowMs = T0 + 6_999;
    const waiting = await rejection(manager.get('pix'));
    expect(waiting.code).toBe('TOKEN_UNAVAILABLE');
    expect(waiting.retryAfterMs).toBe(1);
    expect(waiting.retryAfterS).toBe(1);
    expect(fetcher.calls).toBe(1);

    clock.nowMs = T0 + 7_000;
    expect((await manager.get('pix')).source).toBe('fetched');
    expect(fetcher.calls).toBe(2);
    expect(manager.state('pix')?.consecutiveFailures).toBe(0);
  });

  it('grows exponentially without Retry-After and tells the caller when to come back', async () => {
    fetcher.failAlways = () => unavailable();
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      const err = await rejection(manager.get('pix'));
      delays.push(err.retryAfterMs ?? -1);
      expect(fetcher.calls).toBe(i + 1);
      // Inside the window: no fetch.
      clock.nowMs += (err.retryAfterMs ?? 0) - 1;
      await rejection(manager.get('pix'));
      expect(fetcher.calls).toBe(i + 1);
      clock.nowMs += 1;
    }
    expect(delays).toEqual([500, 1_000, 2_000, 4_000]);
  });

  it('an invalid_client rejection is negative-cached for REJECTED_CACHE_MS', async () => {
    fetcher.failures.push(rejected());
    const err = await rejection(manager.get('pix'));
    expect(err.code).toBe('TOKEN_REJECTED');
    expect(err.kind).toBe('rejected');
    expect(err.retryAfterS).toBe(REJECTED_CACHE_MS / 1000);
    for (const at of [1, 10_000, REJECTED_CACHE_MS - 1]) {
      clock.nowMs = T0 + at;
      const again = await rejection(manager.get('pix'));
      expect(again.code).toBe('TOKEN_REJECTED');
    }
    expect(fetcher.calls).toBe(1);
    clock.nowMs = T0 + REJECTED_CACHE_MS;
    expect((await manager.get('pix')).source).toBe('fetched');
    expect(fetcher.calls).toBe(2);
  });
});

describe('afterUnauthorized', () => {
  it('a 401 for an old fingerprint does not drop the current token', async () => {
    const first = (await manager.get('pix')).token;
    clock.nowMs += 1_000;
    const second = (await manager.refresh('pix')).token;
    expect(second.fingerprint).not.toBe(first.fingerprint);
    expect(fetcher.calls).toBe(2);

    const replayWith = await manager.afterUnauthorized('pix', first.fingerprint);
    expect(replayWith).toBe(second);
    expect(manager.current('pix')).toBe(second);
    expect(fetcher.calls).toBe(2);
  });

  it('a 401 for the current token fetches a different one for the replay', async () => {
    const first = (await manager.get('pix')).token;
    clock.nowMs += 1_000;
    const fresh = await manager.afterUnauthorized('pix', first.fingerprint);
    expect(fresh).toBeDefined();
    expect(fresh?.fingerprint).not.toBe(first.fingerprint);
    expect(manager.current('pix')).toBe(fresh);
    expect(fetcher.calls).toBe(2);
    expect(logLines.some((l) => l.includes('"event":"token.invalidated"') && l.includes(first.fingerprint))).toBe(true);
  });

  it('concurrent 401s for the same token share one refresh', async () => {
    const first = (await manager.get('pix')).token;
    fetcher.gate = new Deferred();
    const all = Array.from({ length: 20 }, () => manager.afterUnauthorized('pix', first.fingerprint));
    fetcher.gate.resolve();
    const fresh = await Promise.all(all);
    expect(fetcher.calls).toBe(2);
    expect(new Set(fresh.map((t) => t?.fingerprint)).size).toBe(1);
    expect(fresh[0]?.fingerprint).not.toBe(first.fingerprint);
  });

  it('persistent 401s force at most one refresh per UNAUTHORIZED_REFRESH_INTERVAL_MS', async () => {
    const first = (await manager.get('pix')).token;
    const second = await manager.afterUnauthorized('pix', first.fingerprint);
    expect(second).toBeDefined();
    expect(fetcher.calls).toBe(2);
    // The vendor refuses the fresh one too: no second forced refresh inside the interval, no replay.
    clock.nowMs += UNAUTHORIZED_REFRESH_INTERVAL_MS - 1;
    expect(await manager.afterUnauthorized('pix', second?.fingerprint ?? '')).toBeUndefined();
    expect(fetcher.calls).toBe(2);
  });

  it('a failing refresh after a 401 yields no replay token', async () => {
    const first = (await manager.get('pix')).token;
    fetcher.failures.push(unavailable());
    expect(await manager.afterUnauthorized('pix', first.fingerprint)).toBeUndefined();
    expect(fetcher.calls).toBe(2);
  });

  // BUG (src/tokens/manager.ts, afterUnauthorized): the rate limit only skips the *forced* refresh, but the token
  // was already dropped by #revokeLocally before the check, so the very next request misses and fetches. A vendor
  // that refuses every token therefore costs one token fetch per request instead of one per interval.
  // Remove `.fails` once fixed (proposed fix in the report: check the rate limit before revoking).
  it('a vendor that refuses every token cannot make the sidecar fetch more than once per interval', async () => {
    for (let i = 0; i < 20; i++) {
      const { token } = await manager.get('pix');
      await manager.afterUnauthorized('pix', token.fingerprint);
      clock.nowMs += 100; // 20 requests within 2 s < UNAUTHORIZED_REFRESH_INTERVAL_MS
    }
    // One cold fetch plus one forced by the first 401.
    expect(fetcher.calls).toBeLessThanOrEqual(2);
  });
});

describe('logs', () => {
  it('name tokens by fingerprint only', async () => {
    const { token } = await manager.get('pix');
    await manager.afterUnauthorized('pix', token.fingerprint);
    fetcher.failures.push(rejected());
    await manager.refresh('pix').catch(() => undefined);
    expect(logLines.length).toBeGreaterThanOrEqual(3);
    const fetched = logLines.find((l) => l.includes('"event":"token.fetched"'));
    expect(fetched).toContain(token.fingerprint);
    for (const issued of fetcher.issued) {
      for (const line of logLines) expect(line).not.toContain(issued.value.reveal());
    }
    for (const line of logLines) expect(line).not.toContain('pix-secret');
  });
});

/** Routes from a YAML list of route entries (credentials of each given as `client: NAME`). */
async function routesOf(entries: { name: string; client: string; warm?: boolean }[]): Promise<Route[]> {
  const loaded = await loadConfigText(`version: 1
routes:
${entries
  .map(
    (e) => `  - name: ${e.name}
    match: { pathPrefix: /${e.name} }
    upstream: https://api.vendor.example/v2
    warm: ${e.warm ?? false}
    auth:
      type: oauth2
      tokenUrl: https://auth.vendor.example/oauth/token
      clientId: ${e.client}
      clientSecret: ${e.client}-secret
      refreshAhead: 20%
`,
  )
  .join('')}`);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  return loaded.config.routes;
}

describe('reload', () => {
  // Defect: `entry.warm ||= route.warm` kept a route warm until restart after a reload turned warm off.
  it('a reload that turns warm off stops readiness waiting on the route and stops its retries', async () => {
    manager.setRoutes(await routesOf([{ name: 'pix', client: 'pix-client', warm: true }]));
    fetcher.failAlways = () => unavailable();
    await manager.warmUp();
    expect(manager.warmRoutesReady()).toBe(false);
    expect(fetcher.calls).toBe(1);
    manager.setRoutes(await routesOf([{ name: 'pix', client: 'pix-client', warm: false }]));
    expect(manager.warmRoutesReady()).toBe(true);
    await clock.advance(60_000); // a warm route would retry in the background by now
    expect(fetcher.calls).toBe(1);
  });

  it('a warm route without a token keeps retrying in the background, so readiness recovers without traffic', async () => {
    manager.setRoutes(await routesOf([{ name: 'pix', client: 'pix-client', warm: true }]));
    fetcher.failures.push(unavailable());
    await manager.warmUp();
    expect(manager.warmRoutesReady()).toBe(false);
    await clock.advance(1_000); // backoff after one failure: 500 ms with random() = 0
    expect(fetcher.calls).toBe(2);
    expect(manager.warmRoutesReady()).toBe(true);
  });
});

describe('refresh schedule', () => {
  it('a used credential refreshes ahead of expiry in the background; an idle one lapses and says so once', async () => {
    const first = (await manager.get('pix')).token;
    await clock.advance(LIFETIME_MS - 20_000); // used since its install: refreshed at the refresh point
    expect(fetcher.calls).toBe(2);
    const second = manager.state('pix')?.fingerprint;
    expect(second).not.toBe(first.fingerprint);
    await clock.advance(LIFETIME_MS); // not used since: no refresh, the token runs out
    expect(fetcher.calls).toBe(2);
    expect(manager.current('pix')).toBeUndefined();
    expect(logLines.filter((l) => l.includes('"event":"token.expired_unused"'))).toHaveLength(1);
  });
});

describe('routes that share a credential', () => {
  // Defect: the shared entry was labelled with whichever route registered it last, so traffic on pix showed up as
  // pix-b in token.fetched and token_fetches_total.
  it('share one token; events and fetch metrics name the route that asked, and the credential', async () => {
    const fetches: string[] = [];
    const observed = newManager({ fetched: (route) => fetches.push(route) });
    try {
      const shared = await routesOf([
        { name: 'pix', client: 'pix-client' },
        { name: 'pix-b', client: 'pix-client' },
        { name: 'kyc', client: 'kyc-client' },
      ]);
      observed.setRoutes(shared);
      const a = await observed.get('pix');
      expect((await observed.get('pix-b')).token).toBe(a.token);
      expect(fetcher.calls).toBe(1);
      expect(fetches).toEqual(['pix']);
      const fetched = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['event'] === 'token.fetched');
      expect(fetched).toHaveLength(1);
      const identity = shared[0]?.auth.type === 'oauth2' ? shared[0].auth.identity : '';
      expect(fetched[0]).toMatchObject({ route: 'pix', credential: identity.slice(0, 12), routes: ['pix', 'pix-b'] });
      expect(observed.state('pix-b')).toMatchObject({ route: 'pix-b', credential: identity.slice(0, 12), fingerprint: a.token.fingerprint });
      // A failure told to another route sharing the credential names that route.
      fetcher.failures.push(rejected());
      await observed.revoke('pix');
      const err = await rejection(observed.get('pix-b'));
      expect(err.route).toBe('pix-b');
    } finally {
      observed.close();
    }
  });
});
