/**
 * Streams a request to the route's upstream through one pooled keep-alive undici Pool per route, and the answer
 * back into the app's response. Redirects are not followed (the Pool never does): a 3xx goes back to the app, so the
 * token is never sent to whatever a Location header names.
 *
 * The hot path talks to the Pool through `dispatch()` with one handler object per request that writes straight into
 * the ServerResponse. `pool.stream()` (the plain undici forwarder's way) adds a promise, an AsyncResource scope, a
 * parsed header object and `finished()` listeners per request; measured here, that was a large share of the CPU and
 * of the allocations of a forwarded request.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Pool } from 'undici';
import type { Route } from '../config/types.js';
import { SidecarError } from '../errors.js';
import { downstreamResponseHeaders } from './headers.js';

export interface UpstreamCall {
  method: string;
  path: string;
  headers: string[];
  body: Buffer | IncomingMessage | null;
}

/** Told once when an upstream exchange is over. */
export interface UpstreamListener {
  /**
   * `err`: the exchange failed (if the answer had started, the app's connection has been cut already).
   * `held`: a 401 answer held back, complete, not yet written: replay, or `release()` it to the app.
   */
  upstreamDone(err: SidecarError | undefined, held: HeldResponse | undefined): void;
}

/** Largest 401 body held back while deciding whether to replay; past it the 401 streams to the app as is. */
const HELD_401_MAX_BYTES = 64 * 1024;

/**
 * A 401 answer kept aside while the replay is decided. If it grows past the cap it is released to the app and
 * streams on, and no replay happens.
 */
export class HeldResponse {
  #chunks: Buffer[] = [];
  #size = 0;
  #released = false;
  #complete = false;

  constructor(
    private readonly res: ServerResponse,
    readonly statusCode: number,
    private readonly headers: string[],
  ) {}

  get released(): boolean {
    return this.#released;
  }

  /** Write the held answer to the app. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.res.writeHead(this.statusCode, this.headers);
    for (const chunk of this.#chunks) this.res.write(chunk);
    this.#chunks = [];
    if (this.#complete) this.res.end();
  }

  /** Whether the caller may go on reading (false: wait for the app's socket to drain). */
  add(chunk: Buffer): boolean {
    if (this.#released) return this.res.write(chunk);
    this.#size += chunk.length;
    this.#chunks.push(chunk);
    if (this.#size > HELD_401_MAX_BYTES) this.release();
    return true;
  }

  end(): void {
    this.#complete = true;
    if (this.#released) this.res.end();
  }
}

/**
 * undici's dispatch handler for one upstream exchange. It implements the callback API that undici 7 calls
 * internally (marked deprecated in its types): a handler written against the newer controller API is wrapped,
 * and the wrapper parses the response headers into an object on every answer.
 * `extraHeaders` are appended to the vendor's response headers (e.g. the request id the sidecar made up).
 */
class ResponseWriter {
  #abort: ((err?: Error) => void) | undefined;
  #resume: (() => void) | undefined;
  #held: HeldResponse | undefined;
  #cancelled = false;

  constructor(
    private readonly route: Route,
    private readonly res: ServerResponse,
    private readonly holdUnauthorized: boolean,
    private readonly extraHeaders: readonly string[] | undefined,
    private readonly listener: UpstreamListener,
  ) {}

  /** The app went away: stop the upstream exchange (onError follows). */
  cancel(): void {
    this.#cancelled = true;
    this.#abort?.(new SidecarError('UPSTREAM_UNREACHABLE', 'request cancelled by the client', { route: this.route.name }));
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#cancelled) abort(new SidecarError('UPSTREAM_UNREACHABLE', 'request cancelled by the client', { route: this.route.name }));
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    // 1xx interim answers are not passed on (Node writes its own 100 Continue when the app asks for it).
    if (statusCode < 200) return true;
    this.#resume = resume;
    const headers = downstreamResponseHeaders(rawHeaders, this.extraHeaders);
    if (this.holdUnauthorized && statusCode === 401) {
      this.#held = new HeldResponse(this.res, statusCode, headers);
      return true;
    }
    this.res.writeHead(statusCode, headers);
    return true;
  }

  onData(chunk: Buffer): boolean {
    const more = this.#held ? this.#held.add(chunk) : this.res.write(chunk);
    // Backpressure: undici pauses the upstream socket until the app's socket drains.
    if (!more && this.#resume) this.res.once('drain', this.#resume);
    return more;
  }

  onComplete(): void {
    const held = this.#held;
    if (held && !held.released) {
      held.end();
      this.listener.upstreamDone(undefined, held);
      return;
    }
    if (held) held.end();
    else this.res.end();
    this.listener.upstreamDone(undefined, undefined);
  }

  onError(err: Error): void {
    const e = upstreamError(err, this.route);
    // The answer has started: cutting the connection is the only honest signal left (else the caller answers).
    if (this.res.headersSent && !this.res.destroyed) this.res.destroy(e);
    this.listener.upstreamDone(e, undefined);
  }
}

export interface UpstreamExchange {
  /** The app went away: stop the upstream exchange. */
  cancel(): void;
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
      const tls = route.upstreamTls;
      pool = new Pool(route.upstreamOrigin, {
        connect: {
          timeout: route.timeouts.connectMs,
          ...(tls ? { ca: tls.ca, cert: tls.cert, key: tls.key?.reveal(), servername: tls.servername } : {}),
        },
        headersTimeout: route.timeouts.responseMs,
        bodyTimeout: route.timeouts.idleMs,
        keepAliveTimeout: 30_000,
      });
      this.#pools.set(key, pool);
    }
    this.#byRoute.set(route, pool);
    return pool;
  }

  /**
   * Send `call` and stream the answer into `res`; `listener.upstreamDone` is called once, possibly before this
   * returns. With `holdUnauthorized`, a 401 answer is held back (unless it is too large to hold) and handed to the
   * listener, so the caller can replay or release it.
   */
  send(route: Route, call: UpstreamCall, res: ServerResponse, holdUnauthorized: boolean, extraHeaders: readonly string[] | undefined, listener: UpstreamListener): UpstreamExchange {
    const writer = new ResponseWriter(route, res, holdUnauthorized, extraHeaders, listener);
    // dispatch() reports every failure, a synchronous one included, through writer.onError.
    this.poolFor(route).dispatch({ path: call.path, method: call.method, headers: call.headers, body: call.body }, writer);
    return writer;
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

function poolKey(route: Route): string {
  const tls = route.upstreamTls;
  return JSON.stringify([route.upstreamOrigin, route.timeouts, tls?.ca, tls?.cert, tls?.key?.reveal(), tls?.servername]);
}

const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

function upstreamError(err: unknown, route: Route): SidecarError {
  if (err instanceof SidecarError) return err;
  const e = err as { code?: string; name?: string };
  if (e.name === 'AbortError' || e.code === 'UND_ERR_ABORTED') {
    return new SidecarError('UPSTREAM_UNREACHABLE', 'request cancelled by the client', { route: route.name, cause: err });
  }
  if (e.code && TIMEOUTS.has(e.code)) {
    const what = e.code === 'UND_ERR_CONNECT_TIMEOUT' ? `could not connect within ${route.timeouts.connectMs} ms` : `did not answer within ${route.timeouts.responseMs} ms`;
    return new SidecarError('UPSTREAM_TIMEOUT', `${route.upstreamOrigin} ${what}`, { route: route.name, cause: err });
  }
  return new SidecarError('UPSTREAM_UNREACHABLE', `${route.upstreamOrigin} unreachable (${e.code ?? 'error'})`, { route: route.name, cause: err });
}
