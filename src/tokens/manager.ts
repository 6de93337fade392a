/**
 * Which token a request gets: the façade over token keeping. Routes map to keepers, one per credential identity
 * (routes with the same credential share a token). Per keeper: memory (hot path, synchronous) → the refresh in
 * flight → the fleet protocol (acquire.ts) → a fetch. Policy is in policy.ts, timers in scheduler.ts, fleet events in
 * fleet-sync.ts, lifecycle events in audit.ts.
 */
import { hostname } from 'node:os';
import { SidecarError, TokenEndpointError } from '../core/errors.js';
import type { Token } from '../core/token.js';
import type { Route } from '../config/types.js';
import type { Logger } from '../log.js';
import type { TokenFetcher } from '../oauth/client.js';
import type { TokenStore } from '../store/store.js';
import { TokenAudit, type TokenObserver } from './audit.js';
import { FleetSync } from './fleet-sync.js';
import { Keeper, type KeeperDeps, type TokenResult } from './keeper.js';
import { usableToken, type TokenSource } from './policy.js';
import { Scheduler, systemTimers, type Timers } from './scheduler.js';
import { StoreTrouble } from './store-trouble.js';

export type { TokenObserver } from './audit.js';
export type { TokenResult } from './keeper.js';
export type { TokenSource } from './policy.js';

export interface RouteTokenState {
  route: string;
  /** The credential the route's token belongs to (identity hash prefix, as in the store key). */
  credential: string;
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
  timers?: Timers;
  /** Store time a refresh may take to find out who fetches, before this pod fetches itself. */
  coordinationTimeoutMs?: number;
  /** Longest a pod waits for another pod's refresh before fetching itself. */
  lockWaitTimeoutMs?: number;
  /** Re-check interval while waiting, in case an event is lost. */
  pollIntervalMs?: number;
  observer?: TokenObserver;
}

const ignore = (): undefined => undefined;

export class TokenManager {
  /** By credential identity. */
  readonly #keepers = new Map<string, Keeper>();
  readonly #byRoute = new Map<string, Keeper>();
  readonly #warmRoutes = new Set<string>();
  readonly #deps: KeeperDeps;
  readonly #sync: FleetSync;
  readonly #observer: TokenObserver;

  constructor(opts: TokenManagerOptions) {
    const nowMs = opts.now ?? Date.now;
    const timers = opts.timers ?? systemTimers;
    this.#observer = opts.observer ?? {};
    const trouble = new StoreTrouble(opts.log);
    this.#deps = {
      store: opts.store,
      fetcher: opts.fetcher,
      audit: new TokenAudit(opts.audit ?? opts.log, opts.podName ?? hostname(), this.#observer),
      log: opts.log,
      scheduler: new Scheduler(timers, nowMs),
      nowMs,
      random: opts.random ?? Math.random,
      coordinationTimeoutMs: opts.coordinationTimeoutMs ?? 1_000,
      lockWaitTimeoutMs: opts.lockWaitTimeoutMs ?? 15_000,
      pollIntervalMs: opts.pollIntervalMs ?? 250,
      trouble,
    };
    this.#sync = new FleetSync({
      store: opts.store,
      trouble,
      timers,
      nowMs,
      keeper: (key) => this.#keepers.get(key),
      keepers: () => this.#keepers.values(),
    });
  }

  /** Install the routes of a (re)loaded config. An unchanged credential keeps its token; settings follow the file. */
  setRoutes(routes: readonly Route[]): void {
    const byKey = new Map<string, Route[]>();
    for (const route of routes) {
      if (route.auth.type !== 'oauth2') continue;
      const sharing = byKey.get(route.auth.identity);
      if (sharing) sharing.push(route);
      else byKey.set(route.auth.identity, [route]);
    }
    this.#byRoute.clear();
    this.#warmRoutes.clear();
    for (const [key, sharing] of byKey) {
      const last = sharing[sharing.length - 1] as Route & { auth: { type: 'oauth2' } };
      let keeper = this.#keepers.get(key);
      if (!keeper) this.#keepers.set(key, (keeper = new Keeper(key, last.auth, this.#deps)));
      keeper.configure(last.auth, sharing.map((r) => r.name), sharing.some((r) => r.warm));
      for (const r of sharing) {
        this.#byRoute.set(r.name, keeper);
        if (r.warm) this.#warmRoutes.add(r.name);
      }
    }
    for (const [key, keeper] of this.#keepers) {
      if (byKey.has(key)) continue;
      keeper.close();
      this.#keepers.delete(key);
    }
  }

  /** The hot path: a usable token from memory, or undefined (then call `get`). No I/O, no allocation. */
  current(routeName: string): Token | undefined {
    const token = this.#byRoute.get(routeName)?.current(routeName, this.#deps.nowMs());
    if (token) this.#observer.lookup?.(routeName, 'memory', true);
    return token;
  }

  async get(routeName: string): Promise<TokenResult> {
    const token = this.current(routeName);
    if (token) return { token, source: 'memory' };
    const keeper = this.#keeper(routeName);
    this.#observer.lookup?.(routeName, 'memory', false);
    return keeper.get(routeName).catch((err: unknown) => {
      throw err instanceof TokenEndpointError ? err.forRoute(routeName) : err;
    });
  }

  /**
   * The vendor answered 401 to a request that carried `failedFingerprint`. Forget that token here and in the
   * store (only if it is still the current one: another pod may have replaced it already), and return a
   * different usable token for one replay, or undefined when none should be tried.
   */
  afterUnauthorized(routeName: string, failedFingerprint: string): Promise<Token | undefined> {
    const keeper = this.#byRoute.get(routeName);
    return keeper ? keeper.afterUnauthorized(routeName, failedFingerprint) : Promise.resolve(undefined);
  }

  /** Fetch a new token now (admin), fleet-wide through the store's lock. */
  async refresh(routeName: string): Promise<TokenResult> {
    return this.#keeper(routeName).refresh(routeName);
  }

  /** Drop the route's current token from every pod (admin revoke); `fleetWide` is false when the store could not be told. */
  async revoke(routeName: string): Promise<{ fingerprint: string | undefined; fleetWide: boolean }> {
    return this.#keeper(routeName).revoke(routeName);
  }

  /** Fetch tokens of `warm: true` routes; resolves when each has one or has failed once (retries go on in the background). */
  async warmUp(): Promise<void> {
    await Promise.all([...this.#warmRoutes].map((name) => this.get(name).catch(ignore)));
  }

  /** Whether every `warm: true` route holds a usable token. */
  warmRoutesReady(): boolean {
    const nowMs = this.#deps.nowMs();
    for (const name of this.#warmRoutes) {
      const keeper = this.#byRoute.get(name);
      if (!keeper || !usableToken(keeper.state, nowMs)) return false;
    }
    return true;
  }

  /** Route → expiry of its usable token (for the expiry gauge). */
  expiries(): Map<string, number> {
    const nowMs = this.#deps.nowMs();
    const out = new Map<string, number>();
    for (const [name, keeper] of this.#byRoute) {
      const token = usableToken(keeper.state, nowMs);
      if (token) out.set(name, token.expiresAtMs);
    }
    return out;
  }

  state(routeName: string): RouteTokenState | undefined {
    const keeper = this.#byRoute.get(routeName);
    if (!keeper) return undefined;
    const s = keeper.state;
    const usable = usableToken(s, this.#deps.nowMs());
    return {
      route: routeName,
      credential: keeper.name.credential,
      fingerprint: usable?.fingerprint,
      expiresAtMs: usable?.expiresAtMs,
      source: usable ? s.source : undefined,
      lastRefreshMs: s.installedAtMs || undefined,
      lastError: s.failure && { code: s.failure.kind === 'rejected' ? 'TOKEN_REJECTED' : 'TOKEN_UNAVAILABLE', message: s.failure.message, atMs: s.failure.atMs },
      consecutiveFailures: s.failures,
    };
  }

  close(): void {
    this.#deps.scheduler.close();
    this.#sync.close();
  }

  #keeper(routeName: string): Keeper {
    const keeper = this.#byRoute.get(routeName);
    if (!keeper) throw new SidecarError('INTERNAL', `route ${routeName} has no OAuth2 credentials`, { route: routeName });
    return keeper;
  }
}
