/**
 * Moves bytes: streams a request to the route's upstream through a pooled keep-alive undici Pool, and tells the
 * exchange what comes back (status, headers, chunks, end or failure). Redirects are not followed (the Pool never
 * does): a 3xx goes back to the app, so the token is never sent to whatever a Location header names.
 *
 * The hot path talks to the Pool through `dispatch()` with one handler object per request that hands each event
 * straight to the exchange. `pool.stream()` (the plain undici forwarder's way) adds a promise, an AsyncResource scope, a
 * parsed header object and `finished()` listeners per request; measured here, that was a large share of the CPU and
 * of the allocations of a forwarded request.
 */
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { buildConnector, Pool } from '../http/undici.js';
import type { Route } from '../config/types.js';
import { SidecarError } from '../core/errors.js';
import { downstreamResponseHeaders } from './headers.js';

export interface UpstreamCall {
  method: string;
  path: string;
  headers: string[];
  body: Buffer | IncomingMessage | null;
}

/** What the exchange hears of one upstream exchange; it alone writes the app's response. */
export interface UpstreamListener {
  /** The vendor's final status and headers (1xx interim answers are not passed on). */
  upstreamHeaders(statusCode: number, headers: string[]): void;
  /** A body chunk; false when the app's socket is full (then `whenDrained` follows). */
  upstreamData(chunk: Buffer): boolean;
  /** Call `resume` once the app's socket drained. */
  whenDrained(resume: () => void): void;
  upstreamEnd(): void;
  /** The exchange failed (called once, instead of `upstreamEnd`). */
  upstreamFailed(err: SidecarError): void;
}

export interface UpstreamExchange {
  /** The app went away: stop the upstream exchange (`upstreamFailed` follows). */
  cancel(): void;
}

/**
 * undici's dispatch handler for one upstream exchange. It implements the callback API that undici 7 calls
 * internally (marked deprecated in its types): a handler written against the newer controller API is wrapped,
 * and the wrapper parses the response headers into an object on every answer.
 * `extraHeaders` are appended to the vendor's response headers (e.g. the request id the sidecar made up).
 */
class UpstreamReader implements UpstreamExchange {
  #abort: ((err?: Error) => void) | undefined;
  #resume: () => void = noop;
  #cancelled = false;

  constructor(
    private readonly route: Route,
    private readonly extraHeaders: readonly string[] | undefined,
    private readonly listener: UpstreamListener,
  ) {}

  cancel(): void {
    this.#cancelled = true;
    this.#abort?.(clientClosed(this.route));
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#cancelled) abort(clientClosed(this.route));
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true;
    this.#resume = resume;
    this.listener.upstreamHeaders(statusCode, downstreamResponseHeaders(rawHeaders, this.extraHeaders));
    return true;
  }

  onData(chunk: Buffer): boolean {
    const more = this.listener.upstreamData(chunk);
    // Backpressure: undici pauses the upstream socket until the app's socket drains.
    if (!more) this.listener.whenDrained(this.#resume);
    return more;
  }

  onComplete(): void {
    this.listener.upstreamEnd();
  }

  onError(err: Error): void {
    this.listener.upstreamFailed(upstreamError(err, this.route));
  }
}

export class Forwarder {
  readonly #pools = new Map<string, Pool>();
  /** Hot-path cache: route objects are immutable per loaded config. */
  readonly #byRoute = new WeakMap<Route, Pool>();

  /**
   * The pool for a route; keyed by everything that shapes its connections (not the route's name: routes to one
   * vendor with the same settings share their keep-alive connections), so a reloaded route with new settings gets a
   * fresh one.
   */
  poolFor(route: Route): Pool {
    const cached = this.#byRoute.get(route);
    if (cached && !cached.closed) return cached;
    const key = poolKey(route);
    let pool = this.#pools.get(key);
    if (!pool) {
      pool = new Pool(route.upstreamOrigin, poolOptions(route));
      this.#pools.set(key, pool);
    }
    this.#byRoute.set(route, pool);
    return pool;
  }

  /** Send `call` and tell `listener` what comes back; it hears the end (or the failure) once, possibly before this returns. */
  send(route: Route, call: UpstreamCall, extraHeaders: readonly string[] | undefined, listener: UpstreamListener): UpstreamExchange {
    const reader = new UpstreamReader(route, extraHeaders, listener);
    // dispatch() reports every failure, a synchronous one included, through reader.onError.
    const h2 = route.http2 === true;
    this.poolFor(route).dispatch({ path: call.path, method: call.method, headers: call.headers, body: call.body, ...(h2 ? H2_DISPATCH : {}) }, reader);
    return reader;
  }

  /** After a reload: close the pools no route uses any more (close() lets their running requests finish). */
  retain(routes: readonly Route[]): void {
    const keep = new Set(routes.map(poolKey));
    for (const [key, pool] of this.#pools) {
      if (keep.has(key)) continue;
      this.#pools.delete(key);
      void pool.close().catch(() => pool.destroy());
    }
  }

  async close(): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.close().catch(() => p.destroy())));
  }
}

/**
 * undici gates h2 streams by `pipelining` (1 by default: one stream per connection) and will not put a non-idempotent
 * request beside others on a session, "since it cannot be retried". It never retries any request, so on an h2-only pool
 * every request is marked idempotent: a POST is then multiplexed like a GET. A failed one still goes back to the app.
 */
const H2_DISPATCH = { idempotent: true } as const;
/** Streams per connection the pool opens before it uses another (a vendor's SETTINGS may allow fewer). */
const H2_STREAMS_PER_CONNECTION = 100;
/** Caps the cold-burst fan-out: without it, every request made while the first TLS handshake runs opens its own. */
const H2_CONNECTIONS = 4;

function poolOptions(route: Route): Pool.Options {
  const tls = route.upstreamTls;
  const connect = {
    timeout: route.timeouts.connectMs,
    ...(tls ? { ca: tls.ca, cert: tls.cert, key: tls.key?.reveal(), servername: tls.servername } : {}),
  };
  const common = {
    headersTimeout: route.timeouts.responseMs,
    bodyTimeout: route.streaming ? 0 : route.timeouts.idleMs,
    keepAliveTimeout: 30_000,
  };
  if (route.http2 === false) return { ...common, connect };
  // ALPN offers h2 and http/1.1 (RFC 7301); plain http never uses h2 (no h2c upstream).
  if (route.http2 === 'auto') return { ...common, connect, allowH2: true };
  // `true`: the vendor speaks h2, so the pool multiplexes. HTTP/1.1 is refused rather than pipelined, which is what
  // these settings would otherwise do on an h1 connection.
  const base = buildConnector({ ...connect, allowH2: true });
  const requireH2: buildConnector.connector = (opts, callback) =>
    base(opts, (err, socket) => {
      if (err || !socket) return callback(err ?? new Error('no socket'), null);
      if ((socket as TLSSocket).alpnProtocol === 'h2') return callback(null, socket);
      socket.destroy();
      const chose = (socket as TLSSocket).alpnProtocol || 'no ALPN';
      callback(new SidecarError('UPSTREAM_UNREACHABLE', `${route.upstreamOrigin} did not agree to HTTP/2 (ALPN: ${chose}); set http2: auto or false on this route`, { route: route.name }), null);
    });
  return { ...common, connect: requireH2, allowH2: true, pipelining: H2_STREAMS_PER_CONNECTION, connections: H2_CONNECTIONS };
}

function poolKey(route: Route): string {
  const tls = route.upstreamTls;
  return JSON.stringify([route.upstreamOrigin, route.http2, route.streaming, route.timeouts, tls?.ca, tls?.cert, tls?.key?.reveal(), tls?.servername]);
}

const noop = (): void => undefined;
const clientClosed = (route: Route) => new SidecarError('CLIENT_CLOSED', 'request cancelled by the client', { route: route.name });

function upstreamError(err: unknown, route: Route): SidecarError {
  if (err instanceof SidecarError) return err;
  const e = err as { code?: string; name?: string };
  if (e.name === 'AbortError' || e.code === 'UND_ERR_ABORTED') return new SidecarError('CLIENT_CLOSED', 'request cancelled by the client', { route: route.name, cause: err });
  const t = route.timeouts;
  const what =
    e.code === 'UND_ERR_CONNECT_TIMEOUT' ? `could not connect within ${t.connectMs} ms`
    : e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'ETIMEDOUT' ? `did not answer within ${t.responseMs} ms`
    : e.code === 'UND_ERR_BODY_TIMEOUT' ? `stopped sending its answer for ${t.idleMs} ms`
    : undefined;
  if (what) return new SidecarError('UPSTREAM_TIMEOUT', `${route.upstreamOrigin} ${what}`, { route: route.name, cause: err });
  return new SidecarError('UPSTREAM_UNREACHABLE', `${route.upstreamOrigin} unreachable (${e.code ?? 'error'})`, { route: route.name, cause: err });
}
