/**
 * The app-facing request handler: match → token → forward → (on 401) replay once. Every path ends in a response:
 * the vendor's, or a problem+json from errors-to-http. The route table and routes are read once per request from
 * an immutable snapshot, so a hot reload never changes a request half-way.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import type { Route } from '../config/types.js';
import { SidecarError, toSidecarError } from '../errors.js';
import type { TokenManager, TokenSource } from '../tokens/manager.js';
import type { Token } from '../tokens/token.js';
import { sendError } from './errors-to-http.js';
import type { Forwarder, HeldResponse, UpstreamExchange, UpstreamListener } from './forward.js';
import { countHostHeaders, formatInjection, upstreamRequestHeaders } from './headers.js';
import { requestIdGenerator } from './request-id.js';
import { matchRequest, type RouteTable } from './match.js';
import { pinoAccessLog, type AccessLog } from './access-log.js';

export interface ProxySnapshot {
  readonly table: RouteTable;
}

export interface RequestObserver {
  completed?(route: string | undefined, status: number, durationS: number): void;
  unauthorized?(route: string, replayed: boolean): void;
}

export interface ProxyHandlerOptions {
  manager: TokenManager;
  forwarder: Forwarder;
  log: Logger;
  /** The per-request line (default: through `log`). */
  accessLog?: AccessLog;
  observer?: RequestObserver;
}

type Source = TokenSource | 'static';

/** What every request's exchange needs from the handler. */
interface Deps {
  readonly manager: TokenManager;
  readonly forwarder: Forwarder;
  readonly log: Logger;
  readonly accessLog: AccessLog;
  readonly observer: RequestObserver;
  readonly nextRequestId: () => string;
  injection(route: Route, token: Token): string;
}

export class ProxyHandler {
  #snapshot: ProxySnapshot;
  readonly #deps: Deps;
  /** The injected header value per route, for its current token: formatted once per token, not per request. */
  readonly #injections = new WeakMap<Route, { token: Token; value: string }>();

  constructor(opts: ProxyHandlerOptions, snapshot: ProxySnapshot) {
    this.#deps = {
      manager: opts.manager,
      forwarder: opts.forwarder,
      log: opts.log,
      accessLog: opts.accessLog ?? pinoAccessLog(opts.log),
      observer: opts.observer ?? {},
      nextRequestId: requestIdGenerator(),
      injection: (route, token) => {
        const cached = this.#injections.get(route);
        if (cached?.token === token) return cached.value;
        const value = formatInjection(route.inject.format, token.value.reveal());
        this.#injections.set(route, { token, value });
        return value;
      },
    };
    this.#snapshot = snapshot;
  }

  setSnapshot(snapshot: ProxySnapshot): void {
    this.#snapshot = snapshot;
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    new Exchange(this.#deps, this.#snapshot, req, res).start();
  };
}

/**
 * One app request, from match to log line. Callbacks, not an async function: on the hot path (token in memory, no
 * body) nothing is awaited, and the exchange object is the upstream listener, so a request costs few allocations.
 */
class Exchange implements UpstreamListener {
  readonly #startedMs = performance.now();
  #route: Route | undefined;
  #path = '/';
  #source: Source | undefined;
  /** Set when the request had to wait for a token (not in memory): from arrival to token in hand. */
  #tokenWaitMs: number | undefined;
  /** The token on the attempt in flight (undefined for static routes). */
  #token: Token | undefined;
  #authorization = '';
  #body: Buffer | IncomingMessage | null = null;
  #replayable = false;
  #replayed = false;
  #code: string | undefined;
  #clientGone = false;
  #done = false;
  #upstream: UpstreamExchange | undefined;
  /** `['x-request-id', id]` when the sidecar made the id (sent to the vendor and returned to the app), else undefined. */
  readonly #madeRequestId: readonly string[] | undefined;
  readonly #requestId: string;

  constructor(
    private readonly deps: Deps,
    private readonly snapshot: ProxySnapshot,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
  ) {
    // Propagate the app's request id, or give the request one, so the vendor, the app and our log line agree.
    const fromApp = req.headers['x-request-id'];
    this.#requestId = typeof fromApp === 'string' ? fromApp : deps.nextRequestId();
    this.#madeRequestId = typeof fromApp === 'string' ? undefined : ['x-request-id', this.#requestId];
  }

  start(): void {
    // The app went away before the answer was complete: cancel the upstream request too.
    this.res.on('close', this.#onClose);
    try {
      if (countHostHeaders(this.req.rawHeaders) > 1) throw new SidecarError('BAD_REQUEST', 'more than one Host header (RFC 9112 §3.2)');
      const match = matchRequest(this.snapshot.table, this.req.method ?? 'GET', this.req.url ?? '/', this.req.headers.host);
      const route = (this.#route = match.route);
      this.#path = match.path;
      if (route.auth.type === 'static') {
        this.#source = 'static';
        this.#authorization = route.auth.value.reveal();
        this.#readBody();
        return;
      }
      const token = this.deps.manager.current(route.name);
      if (token) {
        this.#source = 'memory';
        this.#useToken(route, token);
        this.#readBody();
        return;
      }
      this.deps.manager.get(route.name).then((result) => {
        this.#tokenWaitMs = performance.now() - this.#startedMs;
        this.#source = result.source;
        this.#useToken(route, result.token);
        this.#readBody();
      }, this.#fail);
    } catch (err) {
      this.#fail(err);
    }
  }

  #useToken(route: Route, token: Token): void {
    this.#token = token;
    this.#authorization = this.deps.injection(route, token);
  }

  /**
   * A small, sized body is read into memory so a 401 can be replayed with the same bytes; any other body streams
   * (and is then not replayable).
   */
  #readBody(): void {
    const route = this.#route as Route;
    const headers = this.req.headers;
    const lengthHeader = headers['content-length'];
    if (headers['transfer-encoding'] === undefined && (lengthHeader === undefined || lengthHeader === '0')) {
      this.#replayable = route.retryOn401;
      this.#send();
      return;
    }
    const length = lengthHeader === undefined ? undefined : Number(lengthHeader);
    if (!route.retryOn401 || length === undefined || length > route.replayBodyLimitBytes) {
      this.#body = this.req;
      this.#send();
      return;
    }
    const chunks: Buffer[] = [];
    this.req.on('data', (chunk: Buffer) => chunks.push(chunk));
    this.req.once('end', () => {
      this.#body = Buffer.concat(chunks);
      this.#replayable = true;
      this.#send();
    });
    // Only the app's side can fail here: it went away mid-body.
    this.req.once('error', (err) => {
      this.#clientGone = true;
      this.#fail(err);
    });
  }

  #send(): void {
    if (this.#clientGone) {
      // The app went away while the request waited (for a token, a replay or its body): send nothing.
      this.#code = 'CLIENT_CLOSED';
      this.#finish();
      return;
    }
    const route = this.#route as Route;
    const headers = upstreamRequestHeaders(this.req.rawHeaders, route.inject.header, this.#authorization);
    if (this.#madeRequestId) headers.push(...this.#madeRequestId);
    const hold = this.#replayable && this.#token !== undefined && !this.#replayed;
    this.#upstream = this.deps.forwarder.send(route, { method: this.req.method ?? 'GET', path: this.#path, headers, body: this.#body }, this.res, hold, this.#madeRequestId, this);
  }

  upstreamDone(err: SidecarError | undefined, held: HeldResponse | undefined): void {
    this.#upstream = undefined;
    if (err) return this.#fail(err);
    const route = this.#route as Route;
    const token = this.#token;
    if (held && token) return this.#replay(route, token, held);
    if (token && route.retryOn401 && this.res.statusCode === 401) {
      // A 401 that was not replayed (streamed body, too large to hold, or the replay itself): still tell the
      // manager, so the next request gets a fresh token. Its rate limit keeps a vendor that refuses everything
      // from hammering the IdP.
      this.deps.observer.unauthorized?.(route.name, false);
      this.deps.manager.afterUnauthorized(route.name, token.fingerprint).catch(() => undefined);
    }
    this.#finish();
  }

  /** The vendor refused the token: get a different one and replay once; the replay's answer, 401 or not, goes to the app. */
  #replay(route: Route, token: Token, held: HeldResponse): void {
    this.deps.manager.afterUnauthorized(route.name, token.fingerprint).then((fresh) => {
      this.deps.observer.unauthorized?.(route.name, fresh !== undefined);
      if (fresh && !this.#clientGone) {
        this.#replayed = true;
        this.#useToken(route, fresh);
        this.#send();
      } else {
        held.release();
        this.#finish();
      }
    }, this.#fail);
  }

  readonly #fail = (err: unknown): void => {
    const e = toSidecarError(err, this.#route?.name);
    this.#code = e.code;
    if (this.#clientGone) {
      this.#code = 'CLIENT_CLOSED';
    } else {
      if (this.#madeRequestId && !this.res.headersSent) this.res.setHeader('x-request-id', this.#requestId);
      sendError(this.res, e);
      if (e.code === 'INTERNAL') this.deps.log.error({ err: e.cause instanceof Error ? e.cause.message : String(e.cause), route: this.#route?.name }, 'internal error');
    }
    this.#finish();
  };

  readonly #onClose = (): void => {
    if (this.res.writableFinished) return;
    this.#clientGone = true;
    this.#upstream?.cancel();
  };

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    const durationMs = performance.now() - this.#startedMs;
    const route = this.#route?.name;
    this.deps.observer.completed?.(route, this.res.statusCode, durationMs / 1000);
    this.deps.accessLog.write({
      route,
      method: this.req.method,
      status: this.res.statusCode,
      durationMs: Math.round(durationMs * 100) / 100,
      tokenSource: this.#source,
      tokenWaitMs: this.#tokenWaitMs === undefined ? undefined : Math.round(this.#tokenWaitMs * 100) / 100,
      replayed: this.#replayed,
      code: this.#code,
      requestId: this.#requestId,
    });
  }
}

