/** The token-keeping policy: plain state values in, decisions out. No clock, no timers, no sockets. */
import { describe, expect, it } from 'vitest';
import { TokenEndpointError } from '../../src/core/errors.js';
import { makeToken, type Token } from '../../src/core/token.js';
import {
  acceptable,
  adoption,
  after401,
  backoffError,
  backsOffWith,
  EMPTY_STATE,
  failed,
  install,
  nextWake,
  refreshOnWake,
  REJECTED_CACHE_MS,
  revoked,
  sharedFailureSeen,
  UNAUTHORIZED_REFRESH_INTERVAL_MS,
  usableToken,
  type KeptState,
} from '../../src/tokens/policy.js';

const T0 = 1_800_000_000_000;
const LIFETIME_MS = 100_000; // skew 5 s; refresh due at 20 % left (80 s in)
const RATIO = 0.2;
const noJitter = () => 0;
let n = 0;
const token = (issuedAtMs = T0, lifetimeMs = LIFETIME_MS): Token =>
  makeToken({ value: `tok-${++n}`, tokenType: 'Bearer', issuedAtMs, expiresAtMs: issuedAtMs + lifetimeMs, scope: undefined, lifetimeSource: 'expires_in' });
const holding = (t: Token, source: 'store' | 'fetched' = 'fetched'): KeptState => install(EMPTY_STATE, t, source, t.issuedAtMs, RATIO, noJitter).state;
const unavailable = (retryAfterMs?: number) => new TokenEndpointError('unavailable', 'token endpoint answered 500', { retryAfterMs });

describe('usable and due', () => {
  it('a token is served until expiry minus skew, and refreshed from the jittered point on', () => {
    const t = token();
    const s = holding(t);
    expect(usableToken(s, t.expiresAtMs - 5_001)).toBe(t);
    expect(usableToken(s, t.expiresAtMs - 5_000)).toBeUndefined();
    expect(s.refreshAtMs).toBe(t.expiresAtMs - 20_000); // random() = 0: exactly refreshAhead of the lifetime
    expect(install(EMPTY_STATE, t, 'fetched', T0, RATIO, () => 1).state.refreshAtMs).toBe(t.expiresAtMs - 30_000);
  });
});

describe('install', () => {
  it('names the change: fetched first, refreshed after, loaded from the store, nothing for the same token', () => {
    const a = token();
    const first = install(EMPTY_STATE, a, 'fetched', T0, RATIO, noJitter);
    expect(first.event).toBe('token.fetched');
    const b = token(T0 + 1_000);
    expect(install(first.state, b, 'fetched', T0 + 1_000, RATIO, noJitter).event).toBe('token.refreshed');
    expect(install(first.state, b, 'store', T0 + 1_000, RATIO, noJitter)).toMatchObject({ event: 'token.loaded', state: { sharedFingerprint: b.fingerprint } });
    expect(install(first.state, a, 'fetched', T0, RATIO, noJitter).event).toBeUndefined();
  });

  it('keeps a newer token it already holds (an event brought it while this one was on its way)', () => {
    const newer = token(T0 + 5_000);
    const s = holding(newer, 'store');
    const late = install(s, token(T0), 'fetched', T0 + 6_000, RATIO, noJitter);
    expect(late.state).toBe(s);
    expect(late).toMatchObject({ token: newer, source: 'store', event: undefined });
  });

  it('clears the failures', () => {
    const s = failed(EMPTY_STATE, unavailable(), T0, noJitter).state;
    expect(install(s, token(), 'fetched', T0, RATIO, noJitter).state).toMatchObject({ failures: 0, failure: undefined });
  });
});

describe('failures and backoff', () => {
  it('doubles from 1 s to 30 s (jittered down to half), or follows Retry-After; a refusal is cached 30 s', () => {
    let s = EMPTY_STATE;
    const delays: number[] = [];
    for (let i = 0; i < 7; i++) {
      const r = failed(s, unavailable(), T0, noJitter);
      delays.push(r.backoffMs);
      s = r.state;
    }
    expect(delays).toEqual([500, 1_000, 2_000, 4_000, 8_000, 15_000, 15_000]);
    expect(failed(EMPTY_STATE, unavailable(), T0, () => 1).backoffMs).toBe(1_000);
    expect(failed(EMPTY_STATE, unavailable(7_000), T0, noJitter).backoffMs).toBe(7_000);
    const refused = new TokenEndpointError('rejected', 'refused: invalid_client');
    expect(failed(EMPTY_STATE, refused, T0, noJitter).backoffMs).toBe(REJECTED_CACHE_MS);
  });

  it('while a token is still served, our backoff ends before it stops being served (half the time left, at least 500 ms); Retry-After and refusals are kept', () => {
    const t = token();
    let s = holding(t);
    const servedUntilMs = t.expiresAtMs - 5_000;
    const nowMs = servedUntilMs - 6_000; // 6 s left: backoffs of 4 s and 8 s are cut to 3 s, then to what is left / 2
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = failed(s, unavailable(), nowMs, noJitter);
      delays.push(r.backoffMs);
      s = r.state;
    }
    expect(delays).toEqual([500, 1_000, 2_000, 3_000, 3_000]);
    expect(failed(holding(t), unavailable(), servedUntilMs - 400, noJitter).backoffMs).toBe(500);
    expect(failed(s, unavailable(9_000), nowMs, noJitter).backoffMs).toBe(9_000);
    expect(failed(s, new TokenEndpointError('rejected', 'refused: invalid_client'), nowMs, noJitter).backoffMs).toBe(REJECTED_CACHE_MS);
  });

  it('while backing off, requests get the error with the time left; a refusal keeps its own text', () => {
    const s = failed(EMPTY_STATE, unavailable(7_000), T0, noJitter).state;
    const err = backoffError(s, T0 + 2_500);
    expect(err).toMatchObject({ code: 'TOKEN_UNAVAILABLE', retryAfterMs: 4_500, retryAfterS: 5 });
    expect(err?.message).toContain('retrying in 5 s');
    expect(backoffError(s, T0 + 7_000)).toBeUndefined();
    const refused = failed(EMPTY_STATE, new TokenEndpointError('rejected', 'refused: invalid_client'), T0, noJitter).state;
    expect(backoffError(refused, T0 + 1)).toMatchObject({ code: 'TOKEN_REJECTED', message: 'refused: invalid_client' });
  });

  it("another pod's failure is waited out, never shortened, and not counted as ours; an admin refresh ignores it", () => {
    const ours = failed(EMPTY_STATE, unavailable(10_000), T0, noJitter).state;
    const seen = sharedFailureSeen(ours, { kind: 'unavailable', message: 'down', untilMs: T0 + 3_000 }, T0 + 1);
    expect(seen.failure?.untilMs).toBe(T0 + 10_000);
    expect(seen.failures).toBe(1);
    const f = { untilMs: T0 + 3_000 };
    expect(backsOffWith(f, { reason: 'miss' }, T0)).toBe(true);
    expect(backsOffWith(f, { reason: 'forced' }, T0)).toBe(false);
    expect(backsOffWith(f, { reason: 'miss' }, T0 + 3_000)).toBe(false);
  });
});

describe('what a shared token must be to spare a fetch', () => {
  const mine = token(T0);
  const s = holding(mine);
  it('a miss takes any usable token that was not refused or revoked', () => {
    const other = token(T0 + 1);
    expect(acceptable(s, other, { reason: 'miss' }, T0 + 2, RATIO)).toBe(true);
    expect(acceptable(s, other, { reason: 'unauthorized', reject: other.fingerprint }, T0 + 2, RATIO)).toBe(false);
    expect(acceptable(revoked(s, other.fingerprint).state, other, { reason: 'miss' }, T0 + 2, RATIO)).toBe(false);
    expect(acceptable(s, token(T0 - LIFETIME_MS), { reason: 'miss' }, T0, RATIO)).toBe(false);
  });
  it('a refresh ahead wants one newer than ours and not itself due; an admin refresh wants a newer one', () => {
    const atMs = T0 + 85_000; // ours is due
    expect(acceptable(s, mine, { reason: 'ahead' }, atMs, RATIO)).toBe(false);
    expect(acceptable(s, token(T0 + 1_000), { reason: 'ahead' }, atMs, RATIO)).toBe(false); // due too (at T0 + 81 s)
    expect(acceptable(s, token(T0 + 80_000), { reason: 'ahead' }, atMs, RATIO)).toBe(true);
    expect(acceptable(s, mine, { reason: 'forced' }, T0 + 1, RATIO)).toBe(false);
    expect(acceptable(s, token(T0 + 1), { reason: 'forced' }, T0 + 2, RATIO)).toBe(true);
  });
});

describe('after a vendor 401', () => {
  const refused = token(T0);
  it('uses a different usable token already here, or joins the refresh in flight', () => {
    const replaced = holding(token(T0 + 1));
    expect(after401(replaced, refused.fingerprint, T0 + 2, false)).toMatchObject({ do: 'use' });
    expect(after401(holding(refused), refused.fingerprint, T0 + 2, true)).toEqual({ do: 'join' });
    expect(after401(holding(refused), refused.fingerprint, T0 + 2, false)).toEqual({ do: 'refresh' });
  });
  it('gives up when the token the last forced refresh brought is refused again within the interval', () => {
    const brought = token(T0 + 1);
    const s: KeptState = { ...holding(brought), forced401: { atMs: T0, brought: brought.fingerprint } };
    expect(after401(s, brought.fingerprint, T0 + UNAUTHORIZED_REFRESH_INTERVAL_MS - 1, false)).toEqual({ do: 'give-up' });
    expect(after401(s, brought.fingerprint, T0 + UNAUTHORIZED_REFRESH_INTERVAL_MS, false)).toEqual({ do: 'refresh' });
  });
  it('revoking drops only the token it names, and remembers it', () => {
    const s = holding(refused);
    expect(revoked(s, 'other')).toMatchObject({ dropped: false, state: { token: refused, revokedFingerprint: 'other' } });
    expect(revoked(s, refused.fingerprint)).toMatchObject({ dropped: true, state: { token: undefined, refreshAtMs: Number.POSITIVE_INFINITY } });
  });
});

describe('fleet sync', () => {
  const mine = token(T0);
  const opts = { refreshing: false, reconciling: false };
  it('takes a newer usable shared token that was not revoked', () => {
    expect(adoption(holding(mine), token(T0 + 1), T0 + 2, opts)).toBe('take');
    expect(adoption(holding(mine), token(T0 - 1), T0 + 2, opts)).toBe('none');
    const newer = token(T0 + 1);
    expect(adoption(revoked(holding(mine), newer.fingerprint).state, newer, T0 + 2, opts)).toBe('none');
    expect(adoption(EMPTY_STATE, newer, T0 + 2, opts)).toBe('take');
  });
  it('only a poll without events drops a token the store had and no longer has', () => {
    const shared = holding(mine, 'store');
    expect(adoption(shared, undefined, T0, { refreshing: false, reconciling: true })).toBe('drop-mine');
    expect(adoption(shared, undefined, T0, opts)).toBe('none');
    expect(adoption(shared, undefined, T0, { refreshing: true, reconciling: true })).toBe('none');
    expect(adoption(holding(mine, 'fetched'), undefined, T0, { refreshing: false, reconciling: true })).toBe('none');
  });
});

describe('schedule', () => {
  it('wakes at the refresh point, at the retry after a failure, and for a warm credential without a token', () => {
    const t = token();
    const s = holding(t);
    expect(nextWake(s, false)).toEqual({ atMs: s.refreshAtMs, kind: 'refresh' });
    const afterFailure = failed(s, unavailable(3_000), T0 + 90_000, noJitter).state;
    expect(nextWake(afterFailure, false)).toEqual({ atMs: T0 + 93_000, kind: 'refresh' });
    const cold = failed(EMPTY_STATE, unavailable(3_000), T0, noJitter).state;
    expect(nextWake(cold, true)).toEqual({ atMs: T0 + 3_000, kind: 'retry-cold' });
    expect(nextWake(cold, false)).toBeUndefined();
    expect(nextWake(EMPTY_STATE, true)).toBeUndefined(); // nothing failed yet: the warm-up is already running
  });
  it('at the refresh point, refreshes a credential used since its install (or warm), else lets it lapse', () => {
    const t = token();
    const s = holding(t);
    const atMs = s.refreshAtMs;
    expect(refreshOnWake(s, atMs, T0, false)).toBe('refresh');
    expect(refreshOnWake(s, atMs, T0 - 1, false)).toBe('lapse');
    expect(refreshOnWake(s, atMs, T0 - 1, true)).toBe('refresh');
    expect(refreshOnWake(s, t.expiresAtMs, T0, false)).toBe('none');
  });
});
