/**
 * Token-keeping policy, pure: what this pod knows of one credential's token (`KeptState`, a plain value), and every
 * decision made on it. Time is handed in (`nowMs`), randomness too; nothing here does I/O, so each rule is tested by
 * building a state and asking.
 */
import { TokenEndpointError, type TokenErrorKind } from '../core/errors.js';
import { expirySkewMs, isDueForRefresh, isUsable, jitteredRefreshAtMs, type Token } from '../core/token.js';

export type TokenSource = 'memory' | 'store' | 'fetched';

/** Why a token is wanted: decides which shared token is good enough to take instead of fetching. */
export interface Want {
  readonly reason: 'miss' | 'ahead' | 'unauthorized' | 'forced';
  /** Never accept this token again (the one the vendor just refused). */
  readonly reject?: string | undefined;
}

/** The last failed refresh (ours, or another pod's read from the store). */
export interface Failure {
  readonly kind: TokenErrorKind;
  readonly message: string;
  readonly atMs: number;
  /** No token request before this: the backoff, or the negative cache of a refusal. */
  readonly untilMs: number;
}

export interface KeptState {
  readonly token: Token | undefined;
  readonly source: 'store' | 'fetched' | undefined;
  /** When this pod refreshes in the background (jittered); +∞ without a token. */
  readonly refreshAtMs: number;
  /** When the current (or last) token was installed; 0: never. */
  readonly installedAtMs: number;
  /** Consecutive failed token requests of this pod. */
  readonly failures: number;
  readonly failure: Failure | undefined;
  /** A token dropped on purpose (refused by the vendor, revoked): never taken back from the store. */
  readonly revokedFingerprint: string | undefined;
  /** The token this pod knows to be in the store (read from it, or written to it). */
  readonly sharedFingerprint: string | undefined;
  /** The last refresh a vendor 401 forced, and the token it brought. */
  readonly forced401: { readonly atMs: number; readonly brought: string | undefined } | undefined;
}

export const EMPTY_STATE: KeptState = {
  token: undefined,
  source: undefined,
  refreshAtMs: Number.POSITIVE_INFINITY,
  installedAtMs: 0,
  failures: 0,
  failure: undefined,
  revokedFingerprint: undefined,
  sharedFingerprint: undefined,
  forced401: undefined,
};

/** A refused credential is not retried for this long, so a bad secret cannot hammer the endpoint. */
export const REJECTED_CACHE_MS = 30_000;
/** A token brought by a 401-forced refresh and refused again within this interval is kept, not refreshed again. */
export const UNAUTHORIZED_REFRESH_INTERVAL_MS = 5_000;
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
/** The shortest backoff while a token is still served (see failed). */
const MIN_RETRY_MS = 500;

export function usableToken(s: KeptState, nowMs: number): Token | undefined {
  const token = s.token;
  return token && isUsable(token, nowMs) ? token : undefined;
}

/** The error a request gets while no token request may be made (undefined: one may). */
export function backoffError(s: KeptState, nowMs: number): TokenEndpointError | undefined {
  const f = s.failure;
  if (!f || nowMs >= f.untilMs) return undefined;
  const retryAfterMs = f.untilMs - nowMs;
  const message = f.kind === 'rejected' ? f.message : `${f.message} (retrying in ${Math.ceil(retryAfterMs / 1000)} s)`;
  return new TokenEndpointError(f.kind, message, { retryAfterMs });
}

/** Whether a token found in the store (or carried by an event) spares us a fetch. */
export function acceptable(s: KeptState, candidate: Token | undefined, want: Want, nowMs: number, refreshAheadRatio: number): candidate is Token {
  if (!candidate || !isUsable(candidate, nowMs)) return false;
  if (candidate.fingerprint === want.reject || candidate.fingerprint === s.revokedFingerprint) return false;
  if (want.reason === 'ahead' || want.reason === 'forced') {
    const mine = s.token;
    if (mine && candidate.issuedAtMs <= mine.issuedAtMs) return false;
    if (want.reason === 'ahead' && isDueForRefresh(candidate, nowMs, refreshAheadRatio)) return false;
  }
  return true;
}

/**
 * The shared token this refresh replaces: one issued at or before this time is ours (or older), so the store takes the
 * lock instead of handing it back. A miss or a 401 replaces nothing that is still there.
 */
export function staleAtOrBeforeMs(s: KeptState, want: Want): number | undefined {
  return want.reason === 'ahead' || want.reason === 'forced' ? s.token?.issuedAtMs : undefined;
}

/** Another pod's refresh failed recently: back off as it does (an admin refresh still tries). */
export function backsOffWith(failure: { untilMs: number } | undefined, want: Want, nowMs: number): boolean {
  return failure !== undefined && want.reason !== 'forced' && failure.untilMs > nowMs;
}

export interface Installed {
  readonly state: KeptState;
  /** The token to use: `token`, or the one already held when it was issued later. */
  readonly token: Token;
  readonly source: 'store' | 'fetched';
  /** The lifecycle event to tell, when the held token changed. */
  readonly event: 'token.fetched' | 'token.refreshed' | 'token.loaded' | undefined;
}

export function install(s: KeptState, token: Token, source: 'store' | 'fetched', nowMs: number, refreshAheadRatio: number, random: () => number): Installed {
  const previous = s.token;
  // An event may have brought a newer token while this one was on its way.
  if (previous && previous.issuedAtMs > token.issuedAtMs && isUsable(previous, nowMs)) {
    return { state: s, token: previous, source: s.source ?? source, event: undefined };
  }
  const state: KeptState = {
    ...s,
    token,
    source,
    installedAtMs: nowMs,
    refreshAtMs: jitteredRefreshAtMs(token, refreshAheadRatio, random),
    failures: 0,
    failure: undefined,
    sharedFingerprint: source === 'store' ? token.fingerprint : s.sharedFingerprint,
  };
  const event = previous?.fingerprint === token.fingerprint ? undefined : source === 'store' ? 'token.loaded' : previous ? 'token.refreshed' : 'token.fetched';
  return { state, token, source, event };
}

/** A token request of ours failed: keep the token (if still valid), count the failure, back off. */
export function failed(s: KeptState, err: TokenEndpointError, nowMs: number, random: () => number): { state: KeptState; backoffMs: number } {
  const failures = s.failures + 1;
  let backoffMs =
    err.kind === 'rejected'
      ? REJECTED_CACHE_MS
      : err.retryAfterMs ?? Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (failures - 1)) * (0.5 + 0.5 * random());
  // While the token is still served, our own backoff (not the server's Retry-After, not a refusal) ends before it
  // stops being served: half the time left, at least MIN_RETRY_MS, so an outage shorter than that costs no request.
  const token = usableToken(s, nowMs);
  if (token && err.kind === 'unavailable' && err.retryAfterMs === undefined) {
    backoffMs = Math.min(backoffMs, Math.max(MIN_RETRY_MS, (token.expiresAtMs - expirySkewMs(token) - nowMs) / 2));
  }
  return { state: { ...s, failures, failure: { kind: err.kind, message: err.message, atMs: nowMs, untilMs: nowMs + backoffMs } }, backoffMs };
}

/** Another pod's failure, read from the store, becomes ours to wait out (not counted as our failure). */
export function sharedFailureSeen(s: KeptState, f: { kind: TokenErrorKind; message: string; untilMs: number }, nowMs: number): KeptState {
  return { ...s, failure: { kind: f.kind, message: f.message, atMs: nowMs, untilMs: Math.max(s.failure?.untilMs ?? 0, f.untilMs) } };
}

/** Forget the token with `fingerprint` (and never take it back); `dropped` when it was the one held. */
export function revoked(s: KeptState, fingerprint: string): { state: KeptState; dropped: boolean } {
  if (s.token?.fingerprint !== fingerprint) return { state: { ...s, revokedFingerprint: fingerprint }, dropped: false };
  return { state: { ...s, revokedFingerprint: fingerprint, token: undefined, refreshAtMs: Number.POSITIVE_INFINITY }, dropped: true };
}

/**
 * The vendor answered 401 to a request that carried `failedFingerprint`: `use` another usable token already here
 * (someone replaced the refused one), `join` the refresh already running, `refresh` (forced, fleet-wide), or
 * `give-up` when the token a 401 just brought is refused too: a vendor that refuses every token must not turn each
 * request into a token request.
 */
export type After401 = { readonly do: 'use'; readonly token: Token } | { readonly do: 'join' | 'refresh' | 'give-up' };

export function after401(s: KeptState, failedFingerprint: string, nowMs: number, refreshing: boolean): After401 {
  const current = s.token;
  if (current && current.fingerprint !== failedFingerprint && isUsable(current, nowMs)) return { do: 'use', token: current };
  if (refreshing) return { do: 'join' };
  const last = s.forced401;
  if (last && failedFingerprint === last.brought && nowMs - last.atMs < UNAUTHORIZED_REFRESH_INTERVAL_MS) return { do: 'give-up' };
  return { do: 'refresh' };
}

/** What the store (or an event) holds, against ours: take it, drop ours (it was invalidated elsewhere), or nothing. */
export function adoption(s: KeptState, shared: Token | undefined, nowMs: number, opts: { refreshing: boolean; reconciling: boolean }): 'take' | 'drop-mine' | 'none' {
  const mine = s.token;
  // Only a poll without events can see a deletion: a token of ours that the store had and no longer has.
  if (opts.reconciling && !shared && mine && mine.fingerprint === s.sharedFingerprint && !opts.refreshing) return 'drop-mine';
  if (shared && isUsable(shared, nowMs) && shared.fingerprint !== s.revokedFingerprint && (!mine || shared.issuedAtMs > mine.issuedAtMs)) return 'take';
  return 'none';
}

/**
 * The next time something is due for this credential: the refresh-ahead point (or, after a failure, the retry), or,
 * for a warm credential without a token, the next try, so readiness recovers without traffic.
 */
export function nextWake(s: KeptState, warm: boolean): { atMs: number; kind: 'refresh' | 'retry-cold' } | undefined {
  if (!s.token) return warm && s.failures > 0 ? { atMs: s.failure?.untilMs ?? 0, kind: 'retry-cold' } : undefined;
  return { atMs: s.failures > 0 ? (s.failure?.untilMs ?? 0) : s.refreshAtMs, kind: 'refresh' };
}

/** At the refresh point: refresh only a credential in use (or warm); an idle one lets its token lapse. */
export function refreshOnWake(s: KeptState, nowMs: number, lastUsedMs: number, warm: boolean): 'refresh' | 'lapse' | 'none' {
  if (!usableToken(s, nowMs)) return 'none';
  return warm || lastUsedMs >= s.installedAtMs ? 'refresh' : 'lapse';
}
