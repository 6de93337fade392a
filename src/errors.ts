/**
 * One error family for everything the sidecar answers itself. The code is the stable contract (tests and apps
 * match on it); the message is for humans. `errors-to-http.ts` is the only place that turns one into a response.
 */
export type ErrorCode =
  | 'ROUTE_NOT_FOUND'
  | 'BAD_REQUEST'
  | 'TUNNEL_NOT_SUPPORTED'
  | 'TOKEN_UNAVAILABLE'
  | 'TOKEN_REJECTED'
  | 'UPSTREAM_UNREACHABLE'
  | 'UPSTREAM_TIMEOUT'
  | 'INTERNAL';

const STATUS: Record<ErrorCode, number> = {
  ROUTE_NOT_FOUND: 404,
  BAD_REQUEST: 400,
  TUNNEL_NOT_SUPPORTED: 405,
  TOKEN_UNAVAILABLE: 503,
  TOKEN_REJECTED: 502,
  UPSTREAM_UNREACHABLE: 502,
  UPSTREAM_TIMEOUT: 504,
  INTERNAL: 500,
};

const TITLE: Record<ErrorCode, string> = {
  ROUTE_NOT_FOUND: 'No route matches this request',
  BAD_REQUEST: 'Malformed request',
  TUNNEL_NOT_SUPPORTED: 'CONNECT tunnels are not supported',
  TOKEN_UNAVAILABLE: 'No valid access token is available',
  TOKEN_REJECTED: 'The token endpoint rejected the credentials',
  UPSTREAM_UNREACHABLE: 'The upstream could not be reached',
  UPSTREAM_TIMEOUT: 'The upstream did not answer in time',
  INTERNAL: 'Internal error in the sidecar',
};

export interface SidecarErrorOptions {
  route?: string | undefined;
  /** Seconds the caller should wait before retrying (sent as Retry-After). */
  retryAfterS?: number | undefined;
  cause?: unknown;
}

export class SidecarError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly title: string;
  readonly route: string | undefined;
  readonly retryAfterS: number | undefined;

  constructor(code: ErrorCode, detail: string, opts: SidecarErrorOptions = {}) {
    super(detail, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'SidecarError';
    this.code = code;
    this.status = STATUS[code];
    this.title = TITLE[code];
    this.route = opts.route;
    this.retryAfterS = opts.retryAfterS;
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
