/**
 * One credential's token on this pod: its state (a policy value), the one refresh in flight (single-flight), and
 * what follows each outcome of the fleet protocol. Routes that share a credential share one keeper; every call names
 * the route that asked, for the metrics and the events.
 */
import { TokenEndpointError, type StoreOutage } from '../core/errors.js';
import { isUsable, type Token } from '../core/token.js';
import type { OAuth2Auth } from '../config/types.js';
import type { Logger } from '../log.js';
import type { TokenFetcher } from '../oauth/client.js';
import type { TokenStore } from '../store/store.js';
import { acquire, type Acquired, type Fetched } from './acquire.js';
import type { CredentialName, TokenAudit } from './audit.js';
import * as policy from './policy.js';
import type { KeptState, TokenSource, Want } from './policy.js';
import { RefreshChain } from './refresh-chain.js';
import type { Scheduler } from './scheduler.js';
import type { StoreTrouble } from './store-trouble.js';

export interface TokenResult {
  token: Token;
  source: TokenSource;
}

export interface KeeperDeps {
  readonly store: TokenStore;
  readonly fetcher: TokenFetcher;
  readonly audit: TokenAudit;
  readonly log: Logger;
  readonly scheduler: Scheduler;
  readonly nowMs: () => number;
  readonly random: () => number;
  readonly coordinationTimeoutMs: number;
  readonly lockWaitTimeoutMs: number;
  readonly pollIntervalMs: number;
  readonly trouble: StoreTrouble;
}

const ignore = (): undefined => undefined;

export class Keeper {
  #state: KeptState = policy.EMPTY_STATE;
  /** Written on the hot path: a plain number, not part of the state value. */
  lastUsedMs = 0;
  #askedBy: string | undefined;
  #flight: Promise<TokenResult> | undefined;
  #auth: OAuth2Auth;
  #name: CredentialName;
  #warm = false;
  #chain: RefreshChain | undefined;

  constructor(
    readonly key: string,
    auth: OAuth2Auth,
    private readonly deps: KeeperDeps,
  ) {
    this.#auth = auth;
    this.#name = { credential: key.slice(0, 12), grant: auth.grant, routes: [] };
  }

  get state(): KeptState {
    return this.#state;
  }

  get name(): CredentialName {
    return this.#name;
  }

  get refreshing(): boolean {
    return this.#flight !== undefined;
  }

  /** A (re)loaded config: this credential's latest settings and the routes that use it. */
  configure(auth: OAuth2Auth, routes: readonly string[], warm: boolean): void {
    this.#auth = auth;
    this.#name = { credential: this.key.slice(0, 12), grant: auth.grant, routes };
    this.#warm = warm;
    this.#reschedule();
  }

  /** The hot path: a usable token from memory, or undefined. No I/O, no allocation. */
  current(route: string, nowMs: number): Token | undefined {
    const token = this.#state.token;
    if (!token || !isUsable(token, nowMs)) return undefined;
    this.lastUsedMs = nowMs;
    this.#askedBy = route;
    if (nowMs >= this.#state.refreshAtMs) this.#refreshInBackground('ahead', route);
    return token;
  }

  /** After a memory miss: join the refresh in flight, or start one (unless backing off). */
  get(route: string): Promise<TokenResult> {
    const nowMs = this.deps.nowMs();
    this.lastUsedMs = nowMs;
    this.#askedBy = route;
    if (this.#flight) return this.#flight;
    const backoff = policy.backoffError(this.#state, nowMs);
    return backoff ? Promise.reject(backoff) : this.#fly({ reason: 'miss' }, route);
  }

  /** A different usable token for one replay after the vendor refused `failedFingerprint`, or undefined. */
  async afterUnauthorized(route: string, failedFingerprint: string): Promise<Token | undefined> {
    const nowMs = this.deps.nowMs();
    const flight = this.#flight;
    const decision = policy.after401(this.#state, failedFingerprint, nowMs, flight !== undefined);
    try {
      if (decision.do === 'use') return decision.token;
      if (decision.do === 'give-up') return undefined;
      if (decision.do === 'join' && flight) {
        const joined = (await flight).token;
        return joined.fingerprint === failedFingerprint ? undefined : joined;
      }
      this.#state = { ...this.#state, forced401: { atMs: nowMs, brought: this.#state.forced401?.brought } };
      this.#drop(failedFingerprint, 'upstream_401', route);
      // The store is told inside the flight, so concurrent 401s for this token join it instead of racing it.
      const result = await this.#fly({ reason: 'unauthorized', reject: failedFingerprint }, route);
      this.#state = { ...this.#state, forced401: { atMs: nowMs, brought: result.token.fingerprint } };
      return result.token.fingerprint === failedFingerprint ? undefined : result.token;
    } catch {
      return undefined; // the refresh failure is logged where it happened; the app gets the vendor's 401
    }
  }

  /** Fetch a new token now (admin), fleet-wide through the store's lock. */
  async refresh(route: string): Promise<TokenResult> {
    await this.#flight?.catch(ignore);
    return this.#fly({ reason: 'forced' }, route);
  }

  /** Drop the current token from every pod; `fleetWide` is false when the store could not be told. */
  async revoke(route: string): Promise<{ fingerprint: string | undefined; fleetWide: boolean }> {
    const fingerprint = this.#state.token?.fingerprint;
    if (!fingerprint) return { fingerprint: undefined, fleetWide: true };
    this.#drop(fingerprint, 'admin', route);
    const told = await this.deps.store.invalidate(this.key, fingerprint);
    if (!told.ok) this.deps.trouble.report(told.outage);
    return { fingerprint, fleetWide: told.ok };
  }

  /** Fleet sync: another pod's token, to hold from now on. */
  take(token: Token): void {
    this.#install(token, 'store', undefined);
  }

  /** Fleet sync: the token with `fingerprint` was invalidated elsewhere. */
  drop(fingerprint: string): void {
    this.#drop(fingerprint, 'fleet', undefined);
  }

  /** Fleet sync: our token is in the store again (re-shared after an outage). */
  markShared(fingerprint: string): void {
    this.#state = { ...this.#state, sharedFingerprint: fingerprint };
  }

  close(): void {
    this.deps.scheduler.cancel(this.key);
  }

  #refreshInBackground(reason: Want['reason'], route: string | undefined): void {
    if (this.#flight || this.deps.scheduler.closed || this.deps.nowMs() < (this.#state.failure?.untilMs ?? 0)) return;
    // Failures are recorded and logged inside; the request that triggered this is already served.
    this.#fly({ reason }, route).catch(ignore);
  }

  #fly(want: Want, route: string | undefined): Promise<TokenResult> {
    if (this.#flight) return this.#flight;
    const asking = route ?? this.#name.routes[0] ?? '';
    const flight = this.#acquire(want, asking).finally(() => {
      if (this.#flight === flight) this.#flight = undefined;
    });
    this.#flight = flight;
    return flight;
  }

  async #acquire(want: Want, route: string): Promise<TokenResult> {
    const { store, nowMs, audit } = this.deps;
    // Compare-and-invalidate: drop the refused token from the store only if it is still the shared one.
    if (want.reject !== undefined) {
      const told = await store.invalidate(this.key, want.reject);
      if (!told.ok) this.deps.trouble.report(told.outage);
    }
    const got: Acquired = await acquire({
      store,
      key: this.key,
      nowMs,
      coordinationTimeoutMs: this.deps.coordinationTimeoutMs,
      lockWaitTimeoutMs: this.deps.lockWaitTimeoutMs,
      pollIntervalMs: this.deps.pollIntervalMs,
      staleAtOrBeforeMs: policy.staleAtOrBeforeMs(this.#state, want),
      accepts: (t): t is Token => policy.acceptable(this.#state, t, want, nowMs(), this.#auth.refreshAheadRatio),
      backsOff: (f): f is NonNullable<typeof f> => policy.backsOffWith(f, want, nowMs()),
      fetch: () => this.#fetch(route),
      lookedUp: (hit) => audit.observer.lookup?.(route, 'store', hit),
      outage: (o) => this.deps.trouble.report(o),
    });
    if (got.via !== 'alone') this.deps.trouble.recovered();
    return this.#outcome(got, route);
  }

  /** What each outcome of the protocol means for this pod's state and for the request that waits. */
  #outcome(got: Acquired, route: string): TokenResult | Promise<TokenResult> {
    const { nowMs, audit } = this.deps;
    switch (got.via) {
      case 'store':
        if (got.waitedMs !== undefined) audit.observer.lockWait?.(route, got.waitedMs);
        return this.#install(got.token, 'store', route);
      case 'fetched': {
        const result = this.#install(got.token, 'fetched', route, got.durationMs);
        void got.shared.then((ok) => ok && this.markShared(got.token.fingerprint));
        return result;
      }
      case 'backoff':
        this.#state = policy.sharedFailureSeen(this.#state, got.failure, nowMs());
        this.#reschedule();
        throw new TokenEndpointError(got.failure.kind, got.failure.message, { route, retryAfterMs: got.failure.untilMs - nowMs() });
      case 'failed':
        throw got.error;
      case 'alone':
        return this.#fetchAlone(got.why, route);
    }
  }

  /** The fleet cannot coordinate this refresh: correctness does not depend on it, this pod fetches (still single-flight). */
  async #fetchAlone(why: StoreOutage | 'lock_wait_timeout' | 'foreign_key', route: string): Promise<TokenResult> {
    const names = { route, credential: this.#name.credential };
    if (why === 'lock_wait_timeout') {
      this.deps.log.warn({ event: 'lock.wait_timeout', ...names, lockWaitTimeoutMs: this.deps.lockWaitTimeoutMs }, "gave up waiting for another pod's refresh; fetching here");
    } else if (why === 'foreign_key') {
      this.deps.log.warn({ event: 'store.foreign_key', ...names }, 'the shared token is sealed with an encryption key this pod does not have; fetching for this pod only (roll a new key out as a second key first)');
    } else this.deps.trouble.report(why);
    this.deps.audit.observer.fallback?.(route, typeof why === 'string' ? why : why.reason);
    const fetched = await this.#fetch(route);
    if (!fetched.ok) throw fetched.error;
    return this.#install(fetched.token, 'fetched', route, fetched.durationMs);
  }

  /** One token request, as a value: the failure is recorded (backoff) and told here. */
  async #fetch(route: string): Promise<Fetched> {
    const { nowMs, audit } = this.deps;
    const startedMs = nowMs();
    try {
      const chain = this.#auth.grant === 'refresh_token' ? await (this.#chain ??= new RefreshChain(this.deps.store, (o) => this.deps.trouble.report(o))).input(route, this.#auth) : undefined;
      // A rotated refresh token is kept even when its answer is refused (the old one is spent either way).
      const token = await this.deps.fetcher.fetchToken(route, this.#auth, chain?.grant).finally(() => chain?.saved());
      const durationMs = nowMs() - startedMs;
      audit.fetchSucceeded(route, token, durationMs);
      return { ok: true, token, durationMs };
    } catch (err) {
      const e = err instanceof TokenEndpointError ? err : new TokenEndpointError('unavailable', 'token request failed', { route, cause: err });
      const atMs = nowMs();
      const { state, backoffMs } = policy.failed(this.#state, e, atMs, this.deps.random);
      this.#state = state;
      audit.fetchFailed(this.#name, route, e, state.failures, backoffMs, atMs - startedMs);
      this.#reschedule();
      // The caller learns when a retry is due (Retry-After on the 503).
      const error =
        e.retryAfterMs === undefined
          ? new TokenEndpointError(e.kind, e.message, { route, retryAfterMs: backoffMs, cause: e.cause, oauthError: e.oauthError, description: e.description, httpStatus: e.httpStatus })
          : e;
      return { ok: false, error, failure: { kind: e.kind, message: e.message, untilMs: atMs + backoffMs } };
    }
  }

  #install(token: Token, source: 'store' | 'fetched', route: string | undefined, durationMs?: number): TokenResult {
    const installed = policy.install(this.#state, token, source, this.deps.nowMs(), this.#auth.refreshAheadRatio, this.deps.random);
    if (installed.state === this.#state) return { token: installed.token, source: installed.source };
    this.#state = installed.state;
    if (installed.event) this.deps.audit.installed(this.#name, installed.event, token, source, route, durationMs);
    this.#reschedule();
    return { token, source };
  }

  #drop(fingerprint: string, reason: string, route: string | undefined): void {
    const { state, dropped } = policy.revoked(this.#state, fingerprint);
    this.#state = state;
    if (!dropped) return;
    this.deps.scheduler.cancel(this.key);
    this.deps.audit.invalidated(this.#name, fingerprint, reason, route);
  }

  /** One timer per credential: the next refresh-ahead, or the next retry after a failure. */
  #reschedule(): void {
    const wake = policy.nextWake(this.#state, this.#warm);
    if (!wake) this.deps.scheduler.cancel(this.key);
    else this.deps.scheduler.at(this.key, wake.atMs, wake.kind === 'refresh' ? this.#onRefreshDue : this.#onRetryDue);
  }

  readonly #onRefreshDue = (): void => {
    const action = policy.refreshOnWake(this.#state, this.deps.nowMs(), this.lastUsedMs, this.#warm);
    if (action === 'refresh') this.#refreshInBackground('ahead', this.#askedBy);
    else if (action === 'lapse') this.#noteLapse();
  };

  readonly #onRetryDue = (): void => {
    if (!this.#state.token && !this.#flight) this.#fly({ reason: 'miss' }, this.#askedBy).catch(ignore);
  };

  /** An idle credential's token runs out: say so once, when it expires unused. */
  #noteLapse(): void {
    const { token, installedAtMs } = this.#state;
    if (!token) return;
    this.deps.scheduler.at(this.key, token.expiresAtMs, () => {
      if (this.#state.token === token && this.lastUsedMs < installedAtMs) this.deps.audit.expiredUnused(this.#name, token);
    });
  }
}
