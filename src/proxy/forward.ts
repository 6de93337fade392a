/**
 * Streams a request to the route's upstream through one pooled keep-alive undici Pool per route, and the answer
 * back into the app's response. Redirects are not followed (the Pool never does): a 3xx goes back to the app, so the
 * token is never sent to whatever a Location header names.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { Pool } from 'undici';
import type { Route } from '../config/types.js';
import { SidecarError } from '../errors.js';
import { downstreamResponseHeaders } from './headers.js';

export interface UpstreamCall {
  method: string;
  path: string;
  headers: string[];
  body: Buffer | IncomingMessage | null;
  /** Emits 'abort' when the app goes away (an AbortSignal, or any EventEmitter: undici accepts both). */
  signal: AbortSignal | EventEmitter;
}

/** Largest 401 body held back while deciding whether to replay; past it the 401 streams to the app as is. */
const HELD_401_MAX_BYTES = 64 * 1024;

/**
 * A 401 answer kept aside while the replay is decided. If it grows past the cap it is released to the app and
 * streams on, and no replay happens.
 */
export class HeldResponse extends Writable {
  #chunks: Buffer[] = [];
  #size = 0;
  #released = false;

  constructor(
    private readonly res: ServerResponse,
    readonly statusCode: number,
    private readonly headers: Record<string, string | string[]>,
  ) {
    super();
  }

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
    if (this.writableFinished) this.res.end();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    if (!this.#released) {
      this.#size += chunk.length;
      if (this.#size <= HELD_401_MAX_BYTES) {
        this.#chunks.push(chunk);
        done();
        return;
      }
      this.release();
    }
    if (this.res.write(chunk)) done();
    else this.res.once('drain', () => done());
  }

  override _final(done: (err?: Error | null) => void): void {
    if (this.#released) this.res.end();
    done();
  }
}

export class Forwarder {
  readonly #pools = new Map<string, Pool>();
  /** Hot-path cache: route objects are immutable per loaded config. */
  readonly #byRoute = new WeakMap<Route, Pool>();

  /** The pool for a route; keyed by everything that shapes its connections, so a reloaded route gets a fresh one. */
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
   * Send `call` and stream the answer into `res`. With `holdUnauthorized`, a 401 answer is held back and returned
   * (unless it was too large to hold), so the caller can replay or release it.
   */
  async send(route: Route, call: UpstreamCall, res: ServerResponse, holdUnauthorized: boolean): Promise<HeldResponse | undefined> {
    let held: HeldResponse | undefined;
    try {
      await this.poolFor(route).stream(
        { path: call.path, method: call.method, headers: call.headers, body: call.body, signal: call.signal },
        ({ statusCode, headers }) => {
          const out = downstreamResponseHeaders(headers);
          if (holdUnauthorized && statusCode === 401) return (held = new HeldResponse(res, statusCode, out));
          res.writeHead(statusCode, out);
          return res;
        },
      );
    } catch (err) {
      throw upstreamError(err, route);
    }
    return held?.released ? undefined : held;
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
  return JSON.stringify([route.name, route.upstreamOrigin, route.timeouts, tls?.ca, tls?.cert, tls?.key?.reveal(), tls?.servername]);
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
