/**
 * One error family for everything the sidecar answers itself, and the one code → status table. The code is the
 * stable contract (tests and apps match on it); the message is for humans. `http/problem.ts` is the only place that
 * turns one into a response, for the proxy, the admin API and the webhook alike.
 */
export type ErrorCode =
  | 'ROUTE_NOT_FOUND'
  | 'BAD_REQUEST'
  | 'TUNNEL_NOT_SUPPORTED'
  /** `Upgrade: websocket` on a route without `websocket: true` (docs/streaming.md). */
  | 'UPGRADE_NOT_ALLOWED'
  | 'TOKEN_UNAVAILABLE'
  | 'TOKEN_REJECTED'
  | 'UPSTREAM_UNREACHABLE'
  | 'UPSTREAM_TIMEOUT'
  /** The app went away before its answer was complete; nothing is written (the status is for logs and metrics). */
  | 'CLIENT_CLOSED'
  // Admin API and webhook.
  | 'NOT_FOUND'
  | 'METHOD_NOT_ALLOWED'
  | 'FORBIDDEN'
  | 'STATIC_CREDENTIAL'
  | 'PAYLOAD_TOO_LARGE'
  | 'INTERNAL';

interface CodeFacts {
  readonly status: number;
  readonly title: string;
}

const CODES: Readonly<Record<ErrorCode, CodeFacts>> = {
  ROUTE_NOT_FOUND: { status: 404, title: 'No route matches this request' },
  BAD_REQUEST: { status: 400, title: 'Malformed request' },
  TUNNEL_NOT_SUPPORTED: { status: 405, title: 'CONNECT tunnels are not supported' },
  // 400, not 426: 426 asks the client to upgrade (RFC 9110 §15.5.22, with an Upgrade header naming the protocol),
  // the opposite of this refusal. The request is fine as HTTP; the route's setting is what refuses it.
  UPGRADE_NOT_ALLOWED: { status: 400, title: 'WebSocket upgrades are not allowed on this route' },
  TOKEN_UNAVAILABLE: { status: 503, title: 'No valid access token is available' },
  TOKEN_REJECTED: { status: 502, title: 'The token endpoint rejected the credentials' },
  UPSTREAM_UNREACHABLE: { status: 502, title: 'The upstream could not be reached' },
  UPSTREAM_TIMEOUT: { status: 504, title: 'The upstream did not answer in time' },
  // 499 as nginx logs it: "client closed request". Never sent, since nobody is there to read it.
  CLIENT_CLOSED: { status: 499, title: 'The client closed the request' },
  NOT_FOUND: { status: 404, title: 'Not found' },
  METHOD_NOT_ALLOWED: { status: 405, title: 'Method not allowed' },
  FORBIDDEN: { status: 403, title: 'Forbidden' },
  STATIC_CREDENTIAL: { status: 409, title: 'The route uses a static credential' },
  PAYLOAD_TOO_LARGE: { status: 413, title: 'Request body too large' },
  INTERNAL: { status: 500, title: 'Internal error in the sidecar' },
};

export function statusOf(code: ErrorCode): number {
  return CODES[code].status;
}

export interface SidecarErrorOptions {
  route?: string | undefined;
  /** Seconds the caller should wait before retrying (sent as Retry-After). */
  retryAfterS?: number | undefined;
  /** Methods to name in `Allow` (405 answers, RFC 9110 §15.5.6). */
  allow?: string | undefined;
  cause?: unknown;
}

export class SidecarError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly title: string;
  readonly route: string | undefined;
  readonly retryAfterS: number | undefined;
  readonly allow: string | undefined;

  constructor(code: ErrorCode, detail: string, opts: SidecarErrorOptions = {}) {
    super(detail, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'SidecarError';
    this.code = code;
    this.status = CODES[code].status;
    this.title = CODES[code].title;
    this.route = opts.route;
    this.retryAfterS = opts.retryAfterS;
    this.allow = opts.allow;
  }
}

export function isSidecarError(err: unknown): err is SidecarError {
  return err instanceof SidecarError;
}

/** Any thrown value as a SidecarError; unknown failures become INTERNAL without leaking their message. */
export function toSidecarError(err: unknown, route?: string): SidecarError {
  if (err instanceof SidecarError) return err;
  return new SidecarError('INTERNAL', 'unexpected error', { route, cause: err });
}

/** `rejected`: our credentials or request were refused (negative-cached); `unavailable`: transient. */
export type TokenErrorKind = 'rejected' | 'unavailable';

export interface TokenEndpointErrorOptions {
  route?: string | undefined;
  oauthError?: string | undefined;
  /** The endpoint's own words (error_description), sanitized: for logs only, never in a problem body. */
  description?: string | undefined;
  retryAfterMs?: number | undefined;
  httpStatus?: number | undefined;
  cause?: unknown;
}

/** A failed token request, or a backoff that stands in for one. */
export class TokenEndpointError extends SidecarError {
  readonly kind: TokenErrorKind;
  readonly oauthError: string | undefined;
  readonly description: string | undefined;
  readonly retryAfterMs: number | undefined;
  readonly httpStatus: number | undefined;

  constructor(kind: TokenErrorKind, detail: string, opts: TokenEndpointErrorOptions = {}) {
    super(kind === 'rejected' ? 'TOKEN_REJECTED' : 'TOKEN_UNAVAILABLE', detail, {
      route: opts.route,
      cause: opts.cause,
      retryAfterS: opts.retryAfterMs === undefined ? undefined : Math.ceil(opts.retryAfterMs / 1000),
    });
    this.kind = kind;
    this.oauthError = opts.oauthError;
    this.description = opts.description;
    this.retryAfterMs = opts.retryAfterMs;
    this.httpStatus = opts.httpStatus;
  }

  /** The same failure, told to `route` (routes that share a credential share its failures). */
  forRoute(route: string | undefined): TokenEndpointError {
    if (route === this.route) return this;
    return new TokenEndpointError(this.kind, this.message, {
      route,
      oauthError: this.oauthError,
      description: this.description,
      retryAfterMs: this.retryAfterMs,
      httpStatus: this.httpStatus,
      cause: this.cause,
    });
  }
}

/**
 * A store call that did not give an answer. `down`: no connection (refused, reset, not yet connected, or skipped by
 * the breaker after a failure); `timeout`: connected but late; `error`: the store answered with an error. A value,
 * not an exception: the token protocol decides what each means (fall back to a per-pod fetch).
 */
export interface StoreOutage {
  readonly op: string;
  readonly reason: 'down' | 'timeout' | 'error';
  /** Our text, or the client library's (never a value or a key's content). */
  readonly message: string;
}

export type Stored<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly outage: StoreOutage };
