/**
 * Token lifecycle events, told once: a log line on the audit logger and a count for the metrics. Each event names the
 * credential it belongs to (the first 12 hex chars of its identity hash, as in the store key) and the route that
 * asked, so routes that share one credential are told apart, and `token_fetches_total{route}` counts the calls each
 * route caused. Tokens are named by fingerprint only.
 */
import type { TokenEndpointError } from '../core/errors.js';
import type { Token } from '../core/token.js';
import type { Logger } from '../log.js';

export interface TokenObserver {
  fetched?(route: string, token: Token, durationMs: number): void;
  fetchFailed?(route: string, err: TokenEndpointError, durationMs: number): void;
  lookup?(route: string, layer: 'memory' | 'store', hit: boolean): void;
  lockWait?(route: string, durationMs: number): void;
  /** A token call made because the fleet could not coordinate it (store down, late, erroring; lock wait; key). */
  fallback?(route: string, reason: string): void;
}

/** The credential an event is about. */
export interface CredentialName {
  /** Identity hash prefix: stable, reveals nothing. */
  readonly credential: string;
  readonly grant: string;
  /** Every route that uses the credential (told when more than one does). */
  readonly routes: readonly string[];
}

export class TokenAudit {
  constructor(
    private readonly log: Logger,
    private readonly pod: string,
    readonly observer: TokenObserver,
  ) {}

  installed(c: CredentialName, event: 'token.fetched' | 'token.refreshed' | 'token.loaded', token: Token, source: string, route: string | undefined, durationMs: number | undefined): void {
    this.log[source === 'fetched' ? 'info' : 'debug'](
      {
        event,
        ...this.#names(c, route),
        fingerprint: token.fingerprint,
        expiresAt: new Date(token.expiresAtMs).toISOString(),
        lifetimeSource: token.lifetimeSource,
        source,
        pod: this.pod,
        ...(durationMs === undefined ? {} : { durationMs }),
      },
      event,
    );
  }

  fetchSucceeded(route: string, token: Token, durationMs: number): void {
    this.observer.fetched?.(route, token, durationMs);
  }

  fetchFailed(c: CredentialName, route: string, e: TokenEndpointError, consecutiveFailures: number, retryInMs: number, durationMs: number): void {
    this.observer.fetchFailed?.(route, e, durationMs);
    this.log.warn(
      {
        event: 'token.fetch_failed',
        ...this.#names(c, route),
        pod: this.pod,
        code: e.code,
        oauthError: e.oauthError,
        ...(e.description === undefined ? {} : { oauthErrorDescription: e.description }),
        httpStatus: e.httpStatus,
        consecutiveFailures,
        retryInMs: Math.round(retryInMs),
        durationMs,
      },
      e.message,
    );
  }

  invalidated(c: CredentialName, fingerprint: string, reason: string, route: string | undefined): void {
    this.log.info({ event: 'token.invalidated', ...this.#names(c, route), fingerprint, reason, pod: this.pod }, 'token.invalidated');
  }

  /** An idle credential's token ran out unused: said once, so operators can spot unused routes. */
  expiredUnused(c: CredentialName, token: Token): void {
    this.log.info(
      { event: 'token.expired_unused', ...this.#names(c, undefined), fingerprint: token.fingerprint, expiresAt: new Date(token.expiresAtMs).toISOString(), pod: this.pod },
      'token.expired_unused',
    );
  }

  /** `route`: the one that asked; for fleet-driven events, the credential's only route if it has one. */
  #names(c: CredentialName, asking: string | undefined): Record<string, unknown> {
    const route = asking ?? (c.routes.length === 1 ? c.routes[0] : undefined);
    return {
      ...(route === undefined ? {} : { route }),
      credential: c.credential,
      ...(c.routes.length > 1 ? { routes: c.routes } : {}),
      grant: c.grant,
    };
  }
}
