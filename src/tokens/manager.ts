/**
 * Which token a request gets, and when one is fetched. Per credential identity:
 *   memory (hot path, synchronous) → join the in-flight refresh → shared store → store lock → store again → fetch.
 * A token past its jittered refresh point is served while one background refresh runs; a failed refresh keeps the
 * still-valid token and retries with backoff; an expired token is never served.
 */
import { hostname } from 'node:os';
import type { Logger } from '../log.js';
import type { OAuth2Auth, Route } from '../config/types.js';
import type { TokenFetcher } from '../oauth/client.js';
import { TokenEndpointError } from '../oauth/response.js';
import { SidecarError } from '../errors.js';
import { StoreUnavailableError, type SharedFailure, type StoreEvent, type TokenStore } from '../store/store.js';
import { isDueForRefresh, isUsable, jitteredRefreshAtMs, type Token } from './token.js';

export type TokenSource = 'memory' | 'store' | 'fetched';
export interface TokenResult {
  token: Token;
  source: TokenSource;
}

/** Why a token is wanted: decides which shared token is good enough to take instead of fetching. */
interface Want {
  reason: 'miss' | 'ahead' | 'unauthorized' | 'forced';
  /** Never accept this token again (the one the vendor just refused). */
  reject?: string | undefined;
}

export interface TokenObserver {
  fetched?(route: string, token: Token, durationMs: number): void;
  fetchFailed?(route: string, err: TokenEndpointError, durationMs: number): void;
  lookup?(route: string, layer: 'memory' | 'store', hit: boolean): void;
  lockWait?(route: string, durationMs: number): void;
}

export interface RouteTokenState {
  route: string;
  fingerprint: string | undefined;
  expiresAtMs: number | undefined;
  source: TokenSource | undefined;
  lastRefreshMs: number | undefined;
  lastError: { code: string; message: string; atMs: number } | undefined;
  consecutiveFailures: number;
}

export interface TokenManagerOptions {
  store: TokenStore;
  fetcher: TokenFetcher;
  log: Logger;
  /** Where token lifecycle events go (default: `log`). */
  audit?: Logger;
  /** Named in audit events as the pod that did the work (default: the host name, which is the pod name in Kubernetes). */
  podName?: string;
  now?: () => number;
  random?: () => number;
  /** Longest a pod waits for another pod's refresh before fetching itself. */
  lockWaitTimeoutMs?: number;
  /** Re-check interval while waiting, in case an event is lost. */
  pollIntervalMs?: number;
  observer?: TokenObserver;
}

/** A refused credential is not retried for this long, so a bad secret cannot hammer the endpoint. */
export const REJECTED_CACHE_MS = 30_000;
/** A token brought by a 401-forced refresh and refused again within this interval is kept, not refreshed again. */
export const UNAUTHORIZED_REFRESH_INTERVAL_MS = 5_000;
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
const RECONCILE_INTERVAL_MS = 2_000;
const MAX_TIMER_MS = 2_147_483_647;

class Entry {
  token: Token | undefined;
  source: TokenSource | undefined;
  refreshAtMs = Number.POSITIVE_INFINITY;
  installedAtMs = 0;
  lastUsedMs = 0;
  inflight: Promise<TokenResult> | undefined;
  timer: NodeJS.Timeout | undefined;
  failures = 0;
  lastError: RouteTokenState['lastError'];
  lastErrorKind: 'rejected' | 'unavailable' = 'unavailable';
  backoffUntilMs = 0;
  lastUnauthorizedRefreshMs = Number.NEGATIVE_INFINITY;
  /** The token the last 401-forced refresh brought. */
  unauthorizedRefreshFingerprint: string | undefined;
  revokedFingerprint: string | undefined;
  /** The token this pod knows to be in the store (loaded from it, or written to it). */
  sharedFingerprint: string | undefined;
  warm = false;

  constructor(
    readonly key: string,
    public auth: OAuth2Auth,
    public routeName: string,
  ) {}
}

export class TokenManager {
  readonly #entries = new Map<string, Entry>();
  readonly #byRoute = new Map<string, Entry>();
  readonly #store: TokenStore;
  readonly #fetcher: TokenFetcher;
  readonly #log: Logger;
  readonly #audit: Logger;
  readonly #pod: string;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #lockWaitTimeoutMs: number;
  readonly #pollIntervalMs: number;
  readonly #observer: TokenObserver;
  readonly #reconcileTimer: NodeJS.Timeout;
  #closed = false;

  constructor(opts: TokenManagerOptions) {
    this.#store = opts.store;
    this.#fetcher = opts.fetcher;
    this.#log = opts.log;
    this.#audit = opts.audit ?? opts.log;
    this.#pod = opts.podName ?? hostname();
    this.#now = opts.now ?? Date.now;
    this.#random = opts.random ?? Math.random;
    this.#lockWaitTimeoutMs = opts.lockWaitTimeoutMs ?? 15_000;
    this.#pollIntervalMs = opts.pollIntervalMs ?? 250;
    this.#observer = opts.observer ?? {};
    this.#store.onEvent((e) => this.#onStoreEvent(e));
    // Bounded fallback for lost pub/sub: while events are down, compare local tokens with the store.
    this.#reconcileTimer = setInterval(() => {
      if (!this.#store.eventsLive()) for (const entry of this.#entries.values()) void this.#adopt(entry, true);
    }, RECONCILE_INTERVAL_MS).unref();
  }

  /** Install the routes of a (re)loaded config. Entries are per credential identity, so an unchanged credential keeps its token. */
  setRoutes(routes: readonly Route[]): void {
    const keep = new Set<string>();
    this.#byRoute.clear();
    for (const route of routes) {
      if (route.auth.type !== 'oauth2') continue;
      let entry = this.#entries.get(route.auth.identity);
      if (!entry) {
        entry = new Entry(route.auth.identity, route.auth, route.name);
        this.#entries.set(entry.key, entry);
      }
      entry.auth = route.auth;
      entry.routeName = route.name;
      entry.warm ||= route.warm;
      keep.add(entry.key);
      this.#byRoute.set(route.name, entry);
    }
    for (const [key, entry] of this.#entries) {
      if (keep.has(key)) continue;
      clearTimeout(entry.timer);
      this.#entries.delete(key);
    }
  }

  /** The hot path: a usable token from memory, or undefined (then call `get`). No I/O, no allocation. */
  current(routeName: string): Token | undefined {
    const entry = this.#byRoute.get(routeName);
    const token = entry?.token;
    if (!entry || !token) return undefined;
    const now = this.#now();
    if (!isUsable(token, now)) return undefined;
    entry.lastUsedMs = now;
    this.#observer.lookup?.(routeName, 'memory', true);
    if (now >= entry.refreshAtMs) this.#refreshInBackground(entry, 'ahead');
    return token;
  }

  /** Route → expiry of its usable token (for the expiry gauge). */
  expiries(): Map<string, number> {
    const now = this.#now();
    const out = new Map<string, number>();
    for (const [name, entry] of this.#byRoute) if (entry.token && isUsable(entry.token, now)) out.set(name, entry.token.expiresAtMs);
    return out;
  }

  async get(routeName: string): Promise<TokenResult> {
    const token = this.current(routeName);
    if (token) return { token, source: 'memory' };
    const entry = this.#entry(routeName);
    const now = this.#now();
    entry.lastUsedMs = now;
    this.#observer.lookup?.(routeName, 'memory', false);
    if (entry.inflight) return entry.inflight;
    this.#throwIfBackingOff(entry, now);
    return this.#singleFlight(entry, { reason: 'miss' });
  }

  /**
   * The vendor answered 401 to a request that carried `failedFingerprint`. Forget that token here and in the
   * store (only if it is still the current one: another pod may have replaced it already), and return a
   * different usable token for one replay, or undefined when none should be tried.
   */
  async afterUnauthorized(routeName: string, failedFingerprint: string): Promise<Token | undefined> {
    const entry = this.#byRoute.get(routeName);
    if (!entry) return undefined;
    const now = this.#now();
    const current = entry.token;
    // Someone (another request, another pod) already replaced the refused token.
    if (current && current.fingerprint !== failedFingerprint && isUsable(current, now)) return current;
    try {
      if (entry.inflight) {
        const joined = (await entry.inflight).token;
        return joined.fingerprint === failedFingerprint ? undefined : joined;
      }
      // Checked before revoking: if the token a 401 just brought us is refused too, keep it for the interval rather
      // than fetch again, so a vendor that refuses every token cannot turn each request into a token request.
      if (failedFingerprint === entry.unauthorizedRefreshFingerprint && now - entry.lastUnauthorizedRefreshMs < UNAUTHORIZED_REFRESH_INTERVAL_MS) {
        return undefined;
      }
      entry.lastUnauthorizedRefreshMs = now;
      this.#revokeLocally(entry, failedFingerprint, 'upstream_401');
      // The store is told inside the flight, so concurrent 401s for this token join it instead of racing it.
      const result = await this.#singleFlight(entry, { reason: 'unauthorized', reject: failedFingerprint });
      entry.unauthorizedRefreshFingerprint = result.token.fingerprint;
      return result.token.fingerprint === failedFingerprint ? undefined : result.token;
    } catch {
      return undefined; // the refresh failure is logged where it happened; the app gets the vendor's 401
    }
  }

  /** Fetch a new token now (admin), fleet-wide through the store's lock. */
  async refresh(routeName: string): Promise<TokenResult> {
    const entry = this.#entry(routeName);
    if (entry.inflight) await entry.inflight.catch(() => undefined);
    return this.#singleFlight(entry, { reason: 'forced' });
  }

  /**
   * Drop the route's current token from every pod (admin revoke). `fleetWide` is false when the store could not be
   * told: then only this pod dropped it.
   */
  async revoke(routeName: string): Promise<{ fingerprint: string | undefined; fleetWide: boolean }> {
    const entry = this.#entry(routeName);
    const fingerprint = entry.token?.fingerprint;
    if (!fingerprint) return { fingerprint: undefined, fleetWide: true };
    this.#revokeLocally(entry, fingerprint, 'admin');
    try {
      await this.#store.invalidate(entry.key, fingerprint);
      return { fingerprint, fleetWide: true };
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      this.#storeTrouble('invalidate', err);
      return { fingerprint, fleetWide: false };
    }
  }

  /** Fetch tokens of `warm: true` routes; resolves when each has one or has failed once (retries go on in the background). */
  async warmUp(): Promise<void> {
    await Promise.all(
      [...this.#byRoute.entries()]
        .filter(([, e]) => e.warm)
        .map(([name]) => this.get(name).catch(() => undefined)),
    );
  }

  /** Whether every `warm: true` route holds a usable token. */
  warmRoutesReady(): boolean {
    const now = this.#now();
    for (const entry of this.#byRoute.values()) {
      if (entry.warm && !(entry.token && isUsable(entry.token, now))) return false;
    }
    return true;
  }

  state(routeName: string): RouteTokenState | undefined {
    const entry = this.#byRoute.get(routeName);
    if (!entry) return undefined;
    const usable = entry.token && isUsable(entry.token, this.#now()) ? entry.token : undefined;
    return {
      route: routeName,
      fingerprint: usable?.fingerprint,
      expiresAtMs: usable?.expiresAtMs,
      source: usable ? entry.source : undefined,
      lastRefreshMs: entry.installedAtMs || undefined,
      lastError: entry.lastError,
      consecutiveFailures: entry.failures,
    };
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#reconcileTimer);
    for (const entry of this.#entries.values()) clearTimeout(entry.timer);
  }

  #entry(routeName: string): Entry {
    const entry = this.#byRoute.get(routeName);
    if (!entry) throw new SidecarError('INTERNAL', `route ${routeName} has no OAuth2 credentials`, { route: routeName });
    return entry;
  }

  #throwIfBackingOff(entry: Entry, now: number): void {
    if (!entry.lastError) return;
    if (entry.lastErrorKind === 'rejected' && now < entry.backoffUntilMs) {
      throw new TokenEndpointError('rejected', entry.lastError.message, {
        route: entry.routeName,
        retryAfterMs: entry.backoffUntilMs - now,
      });
    }
    if (now < entry.backoffUntilMs) {
      throw new TokenEndpointError('unavailable', `${entry.lastError.message} (retrying in ${Math.ceil((entry.backoffUntilMs - now) / 1000)} s)`, {
        route: entry.routeName,
        retryAfterMs: entry.backoffUntilMs - now,
      });
    }
  }

  #refreshInBackground(entry: Entry, reason: Want['reason']): void {
    if (entry.inflight || this.#now() < entry.backoffUntilMs || this.#closed) return;
    // Failures are recorded and logged inside; the request that triggered this is already served.
    this.#singleFlight(entry, { reason }).catch(() => undefined);
  }

  #singleFlight(entry: Entry, want: Want): Promise<TokenResult> {
    if (entry.inflight) return entry.inflight;
    const flight = this.#acquire(entry, want).finally(() => {
      if (entry.inflight === flight) entry.inflight = undefined;
    });
    entry.inflight = flight;
    return flight;
  }

  /** Whether a token found in the store spares us a fetch. */
  #acceptable(entry: Entry, token: Token | undefined, want: Want, now: number): token is Token {
    if (!token || !isUsable(token, now)) return false;
    if (token.fingerprint === want.reject || token.fingerprint === entry.revokedFingerprint) return false;
    if (want.reason === 'ahead' || want.reason === 'forced') {
      const mine = entry.token;
      if (mine && token.issuedAtMs <= mine.issuedAtMs) return false;
      if (want.reason === 'ahead' && isDueForRefresh(token, now, entry.auth.refreshAheadRatio)) return false;
    }
    return true;
  }

  async #acquire(entry: Entry, want: Want): Promise<TokenResult> {
    const startedMs = this.#now();
    try {
      // Compare-and-invalidate: drop the refused token from the store only if it is still the shared one.
      if (want.reason === 'unauthorized' && want.reject) {
        await this.#store.invalidate(entry.key, want.reject).catch((err: unknown) => {
          if (!(err instanceof StoreUnavailableError)) throw err;
          this.#storeTrouble('invalidate', err);
        });
      }
      // On a cold start (nothing shared, no failure) this read also takes the lock: one round trip, not three.
      const first = await this.#store.readOrLock(entry.key);
      const shared = first.token;
      const hit = this.#acceptable(entry, shared, want, this.#now());
      this.#observer.lookup?.(entry.routeName, 'store', hit);
      if (hit) return this.#install(entry, shared, 'store');
      // (A lock only comes with an empty read: no token to take, no failure to back off from.)
      this.#throwIfSharedFailure(entry, first.failure, want);
      let lockedWithRead = first.lock;
      const deadlineMs = startedMs + this.#lockWaitTimeoutMs;
      for (;;) {
        const lock = lockedWithRead ?? (await this.#store.tryLock(entry.key));
        const atomic = lockedWithRead !== undefined;
        lockedWithRead = undefined;
        if (lock) {
          let handedOff = false;
          try {
            // Read again under the lock: the previous holder may have written between our read and our lock (not
            // needed when the lock came with the read itself).
            if (!atomic) {
              const again = await this.#store.read(entry.key);
              const againToken = again.token;
              if (this.#acceptable(entry, againToken, want, this.#now())) return this.#install(entry, againToken, 'store');
              this.#throwIfSharedFailure(entry, again.failure, want);
            }
            const fetchStartedMs = this.#now();
            const token = await this.#fetch(entry).catch(async (err: unknown) => {
              // Tell the fleet, so the other pods back off too instead of each trying in turn.
              if (err instanceof TokenEndpointError && entry.lastError) {
                const failure = { kind: err.kind, message: entry.lastError.message, untilMs: entry.backoffUntilMs };
                await this.#store.putFailure(entry.key, failure).catch((e: unknown) => this.#storeTrouble('put_failure', e));
              }
              throw err;
            });
            const result = this.#install(entry, token, 'fetched', this.#now() - fetchStartedMs);
            // Share the token, then let go of the lock, in that order (a pod that takes the lock next must find the
            // token), but without keeping this pod's waiting requests behind those two round trips.
            handedOff = true;
            void this.#store
              .put(entry.key, token)
              .then(
                () => (entry.sharedFingerprint = token.fingerprint),
                (err: unknown) => this.#storeTrouble('put', err),
              )
              .finally(() => lock.release().catch((err: unknown) => this.#storeTrouble('unlock', err)));
            return result;
          } finally {
            if (!handedOff) await lock.release().catch((err: unknown) => this.#storeTrouble('unlock', err));
          }
        }
        // Another pod holds the lock: wait for its result (woken by its event, or polled).
        const remainingMs = deadlineMs - this.#now();
        if (remainingMs <= 0) break;
        const carried = await this.#store.waitForEvent(entry.key, Math.min(remainingMs, this.#pollIntervalMs));
        if (carried && this.#acceptable(entry, carried, want, this.#now())) {
          this.#observer.lockWait?.(entry.routeName, this.#now() - startedMs);
          return this.#install(entry, carried, 'store');
        }
        const landed = await this.#store.read(entry.key);
        const landedToken = landed.token;
        if (this.#acceptable(entry, landedToken, want, this.#now())) {
          this.#observer.lockWait?.(entry.routeName, this.#now() - startedMs);
          return this.#install(entry, landedToken, 'store');
        }
        this.#throwIfSharedFailure(entry, landed.failure, want);
      }
      this.#log.warn({ event: 'lock.wait_timeout', route: entry.routeName, waitedMs: this.#now() - startedMs }, 'gave up waiting for another pod\'s refresh; fetching here');
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      this.#storeTrouble('refresh', err);
    }
    // The store cannot coordinate: correctness does not depend on it, this pod fetches (still single-flight here).
    const fetchStartedMs = this.#now();
    const token = await this.#fetch(entry);
    return this.#install(entry, token, 'fetched', this.#now() - fetchStartedMs);
  }

  /** Another pod's refresh just failed: back off as it does (an admin refresh still tries). */
  #throwIfSharedFailure(entry: Entry, failure: SharedFailure | undefined, want: Want): void {
    const now = this.#now();
    if (!failure || want.reason === 'forced' || failure.untilMs <= now) return;
    entry.lastError = { code: failure.kind === 'rejected' ? 'TOKEN_REJECTED' : 'TOKEN_UNAVAILABLE', message: failure.message, atMs: now };
    entry.lastErrorKind = failure.kind;
    entry.backoffUntilMs = Math.max(entry.backoffUntilMs, failure.untilMs);
    this.#schedule(entry);
    throw new TokenEndpointError(failure.kind, failure.message, { route: entry.routeName, retryAfterMs: failure.untilMs - now });
  }

  async #fetch(entry: Entry): Promise<Token> {
    const startedMs = this.#now();
    try {
      const token = await this.#fetcher.fetchToken(entry.routeName, entry.auth);
      this.#observer.fetched?.(entry.routeName, token, this.#now() - startedMs);
      return token;
    } catch (err) {
      const e = err instanceof TokenEndpointError ? err : new TokenEndpointError('unavailable', 'token request failed', { route: entry.routeName, cause: err });
      const now = this.#now();
      entry.failures += 1;
      entry.lastError = { code: e.code, message: e.message, atMs: now };
      entry.lastErrorKind = e.kind;
      const backoffMs =
        e.kind === 'rejected'
          ? REJECTED_CACHE_MS
          : e.retryAfterMs ?? Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** (entry.failures - 1)) * (0.5 + 0.5 * this.#random());
      entry.backoffUntilMs = now + backoffMs;
      this.#observer.fetchFailed?.(entry.routeName, e, now - startedMs);
      this.#audit.warn(
        {
          event: 'token.fetch_failed',
          route: entry.routeName,
          grant: entry.auth.grant,
          pod: this.#pod,
          code: e.code,
          oauthError: e.oauthError,
          httpStatus: e.httpStatus,
          consecutiveFailures: entry.failures,
          retryInMs: Math.round(backoffMs),
          durationMs: now - startedMs,
        },
        e.message,
      );
      this.#schedule(entry);
      // The caller learns when a retry is due (Retry-After on the 503).
      throw e.retryAfterMs === undefined
        ? new TokenEndpointError(e.kind, e.message, { route: entry.routeName, retryAfterMs: backoffMs, cause: e.cause, ...(e.oauthError ? { oauthError: e.oauthError } : {}), ...(e.httpStatus ? { httpStatus: e.httpStatus } : {}) })
        : e;
    }
  }

  #install(entry: Entry, token: Token, source: TokenSource, durationMs?: number): TokenResult {
    const now = this.#now();
    const previous = entry.token;
    // An event may have brought a newer token while this one was on its way.
    if (previous && previous.issuedAtMs > token.issuedAtMs && isUsable(previous, now)) {
      return { token: previous, source: entry.source ?? source };
    }
    entry.token = token;
    entry.source = source;
    if (source === 'store') entry.sharedFingerprint = token.fingerprint;
    entry.installedAtMs = now;
    entry.refreshAtMs = jitteredRefreshAtMs(token, entry.auth.refreshAheadRatio, this.#random);
    entry.failures = 0;
    entry.lastError = undefined;
    entry.backoffUntilMs = 0;
    if (previous?.fingerprint !== token.fingerprint) {
      const event = source !== 'fetched' ? 'token.loaded' : previous ? 'token.refreshed' : 'token.fetched';
      this.#audit[source === 'fetched' ? 'info' : 'debug'](
        {
          event,
          route: entry.routeName,
          grant: entry.auth.grant,
          fingerprint: token.fingerprint,
          expiresAt: new Date(token.expiresAtMs).toISOString(),
          lifetimeSource: token.lifetimeSource,
          source,
          pod: this.#pod,
          ...(durationMs === undefined ? {} : { durationMs }),
        },
        event,
      );
    }
    this.#schedule(entry);
    return { token, source };
  }

  /** One timer per entry: the next refresh-ahead, or the next retry after a failure. */
  #schedule(entry: Entry): void {
    clearTimeout(entry.timer);
    entry.timer = undefined;
    if (this.#closed) return;
    if (!entry.token) {
      // A warm route with no token keeps trying in the background, so readiness recovers without traffic.
      if (entry.warm && entry.failures > 0) {
        entry.timer = setTimeout(() => {
          entry.timer = undefined;
          if (!entry.token && !entry.inflight) this.#singleFlight(entry, { reason: 'miss' }).catch(() => undefined);
        }, Math.min(MAX_TIMER_MS, Math.max(0, entry.backoffUntilMs - this.#now()))).unref();
      }
      return;
    }
    const atMs = entry.failures > 0 ? entry.backoffUntilMs : entry.refreshAtMs;
    const delayMs = Math.min(MAX_TIMER_MS, Math.max(0, atMs - this.#now()));
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      const token = entry.token;
      if (!token || !isUsable(token, this.#now())) return;
      // Keep tokens fresh only for routes in use (or warm ones); an idle route lets its token lapse.
      if (entry.warm || entry.lastUsedMs >= entry.installedAtMs) this.#refreshInBackground(entry, 'ahead');
      else this.#noteExpiryIfUnused(entry, token);
    }, delayMs).unref();
  }

  /** An idle route's token runs out: say so once (`token.expired_unused`), so operators can spot unused routes. */
  #noteExpiryIfUnused(entry: Entry, token: Token): void {
    const installedAtMs = entry.installedAtMs;
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      if (entry.token !== token || entry.lastUsedMs >= installedAtMs) return;
      this.#audit.info(
        { event: 'token.expired_unused', route: entry.routeName, grant: entry.auth.grant, fingerprint: token.fingerprint, expiresAt: new Date(token.expiresAtMs).toISOString(), pod: this.#pod },
        'token.expired_unused',
      );
    }, Math.min(MAX_TIMER_MS, Math.max(0, token.expiresAtMs - this.#now()))).unref();
  }

  #revokeLocally(entry: Entry, fingerprint: string, reason: string): void {
    entry.revokedFingerprint = fingerprint;
    if (entry.token?.fingerprint !== fingerprint) return;
    entry.token = undefined;
    entry.refreshAtMs = Number.POSITIVE_INFINITY;
    clearTimeout(entry.timer);
    this.#audit.info({ event: 'token.invalidated', route: entry.routeName, grant: entry.auth.grant, fingerprint, reason, pod: this.#pod }, 'token.invalidated');
  }

  #onStoreEvent(event: StoreEvent): void {
    if (event.kind === 'reconnected') {
      for (const entry of this.#entries.values()) void this.#reseed(entry);
      return;
    }
    const entry = this.#entries.get(event.key);
    if (!entry) return;
    if (event.kind === 'invalidated') this.#revokeLocally(entry, event.fingerprint, 'fleet');
    else if (entry.token?.fingerprint !== event.fingerprint && !entry.inflight) void this.#adopt(entry, false, event.token);
  }

  /**
   * Take the store's token (or the one an event `carried`) if it is newer than ours (another pod refreshed). When
   * reconciling without events, a token of ours that the store had and no longer has was invalidated elsewhere:
   * drop it too.
   */
  async #adopt(entry: Entry, reconciling = false, carried?: Token): Promise<void> {
    try {
      const shared = carried ?? (await this.#store.get(entry.key));
      const now = this.#now();
      const mine = entry.token;
      if (reconciling && !shared && mine && mine.fingerprint === entry.sharedFingerprint && !entry.inflight) {
        this.#revokeLocally(entry, mine.fingerprint, 'fleet');
        return;
      }
      if (shared && isUsable(shared, now) && shared.fingerprint !== entry.revokedFingerprint &&
          (!entry.token || shared.issuedAtMs > entry.token.issuedAtMs)) {
        this.#install(entry, shared, 'store');
      }
    } catch (err) {
      this.#storeTrouble('adopt', err);
    }
  }

  /**
   * The store is back after an outage and may have lost its data: share our token again (newer-wins keeps a fresher
   * one), or take the store's if it is newer. This is how pods rejoin without a new token request.
   */
  async #reseed(entry: Entry): Promise<void> {
    const mine = entry.token;
    try {
      const shared = await this.#store.get(entry.key);
      if (!shared && mine && isUsable(mine, this.#now())) {
        await this.#store.put(entry.key, mine);
        entry.sharedFingerprint = mine.fingerprint;
      }
      else if (shared && (!mine || shared.issuedAtMs > mine.issuedAtMs)) await this.#adopt(entry);
    } catch (err) {
      this.#storeTrouble('reseed', err);
    }
  }

  #storeTrouble(op: string, err: unknown): void {
    // Once per refresh at most (never per request): worth a warning, it means the fleet is not sharing.
    this.#log.warn({ event: 'store.error', op, err: err instanceof Error ? (err.cause instanceof Error ? `${err.message}: ${err.cause.message}` : err.message) : String(err) }, 'store call failed; this pod fetches for itself');
  }
}
