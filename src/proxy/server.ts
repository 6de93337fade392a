/**
 * The app-facing request handler: match → token → forward → (on 401) replay once. Every path ends in a response:
 * the vendor's, or a problem+json from http/problem.ts, and the exchange is the only writer of that response. The route table and routes are read once per request from
 * an immutable snapshot, so a hot reload never changes a request half-way.
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import type { Route } from '../config/types.js';
import { SidecarError, statusOf, toSidecarError } from '../core/errors.js';
import type { Token } from '../core/token.js';
import type { TokenManager, TokenSource } from '../tokens/manager.js';
import { sendError } from '../http/problem.js';
import type { Forwarder, UpstreamExchange, UpstreamListener } from './forward.js';
import { bodyPlan, Held401, holds401, retireAfter401, tokenForReplay, type ReplayObserver } from './replay.js';
import { countHostHeaders, formatInjection, upstreamRequestHeaders } from './headers.js';
import { requestIdGenerator } from './request-id.js';
import { UpstreamDpop } from './dpop-upstream.js';
import { matchRequest, type RouteTable } from './match.js';
import { pinoAccessLog, type AccessLog } from './access-log.js';
import { tunnelAuthority } from './tunnel.js';
import { Upgrades, type UpgradeListener } from './upgrade.js';

export interface ProxySnapshot {
  readonly table: RouteTable;
}

export interface RequestObserver extends ReplayObserver {
  completed?(route: string | undefined, status: number, durationS: number): void;
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
  readonly dpop: UpstreamDpop;
  injection(route: Route, token: Token): string;
}

export class ProxyHandler {
  #snapshot: ProxySnapshot;
  readonly #deps: Deps;
  readonly #upgrades: Upgrades;
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
      dpop: new UpstreamDpop(),
      injection: (route, token) => {
        const cached = this.#injections.get(route);
        if (cached?.token === token) return cached.value;
        // RFC 9449 §7.1: a DPoP-bound token goes with the DPoP scheme, whatever the Bearer format says.
        const value = token.tokenType === 'DPoP' ? `DPoP ${token.value.reveal()}` : formatInjection(route.inject.format, token.value.reveal());
        this.#injections.set(route, { token, value });
        return value;
      },
    };
    this.#snapshot = snapshot;
    this.#upgrades = new Upgrades(this.#deps, () => this.#snapshot.table, requestTarget);
  }

  setSnapshot(snapshot: ProxySnapshot): void {
    this.#snapshot = snapshot;
  }

  /** The route table requests are matched against now (a tunnel is accepted only for a host it serves). */
  readonly currentTable = (): RouteTable => this.#snapshot.table;

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    new Exchange(this.#deps, this.#snapshot, req, res, false).start();
  };

  /**
   * The server's 'checkContinue' (`Expect: 100-continue`, RFC 9110 §10.1.1): the same exchange, which sends 100 only
   * when it is about to read the body (route matched, request accepted, token in hand). Any earlier answer goes out
   * without it, and Node then closes the connection, since the body was never read.
   */
  readonly handleExpectContinue = (req: IncomingMessage, res: ServerResponse): void => {
    new Exchange(this.#deps, this.#snapshot, req, res, true).start();
  };

  /** The server's 'upgrade' listener: WebSocket through a route (upgrade.ts); other upgrades are served as HTTP/1.1. */
  upgradeListener(server: Server): UpgradeListener {
    return this.#upgrades.listener(server);
  }

  /** Close every upgraded connection: at shutdown, since the server's closeAllConnections() does not reach them. */
  closeUpgrades(): void {
    this.#upgrades.closeAll();
  }
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
  /** The body is in memory (or there is none): a replay can send it again. */
  #bodyKept = false;
  #replayed = false;
  /** This attempt carries a DPoP proof; the one retry with a new nonce (RFC 9449 §9) was made. */
  #proofSent = false;
  #nonceRetried = false;
  /** This attempt's 401 is held back for a replay. */
  #holding = false;
  #held: Held401 | undefined;
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
    /** The client waits for 100 Continue before it sends the body. */
    private readonly expectsContinue: boolean,
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
      const match = matchRequest(this.snapshot.table, this.req.method ?? 'GET', requestTarget(this.req), this.req.headers.host);
      const route = (this.#route = match.route);
      this.#path = match.path;
      if (route.auth.type === 'static') {
        this.#source = 'static';
        this.#authorization = route.auth.value.reveal();
        this.#readBody(route);
        return;
      }
      const token = this.deps.manager.current(route.name);
      if (token) {
        this.#source = 'memory';
        this.#useToken(route, token);
        this.#readBody(route);
        return;
      }
      this.deps.manager.get(route.name).then((result) => {
        this.#tokenWaitMs = performance.now() - this.#startedMs;
        this.#source = result.source;
        this.#useToken(route, result.token);
        this.#readBody(route);
      }, this.#fail);
    } catch (err) {
      this.#fail(err);
    }
  }

  #useToken(route: Route, token: Token): void {
    this.#token = token;
    this.#authorization = this.deps.injection(route, token);
  }

  #readBody(route: Route): void {
    // The app left while the request waited (for its token): its body will never come; #send logs CLIENT_CLOSED.
    if (this.#clientGone) return this.#send(route);
    // Only now is the body wanted: tell a client that waits for it to send it.
    if (this.expectsContinue) this.res.writeContinue();
    const plan = bodyPlan(route, this.req.headers);
    if (plan !== 'buffer') {
      this.#bodyKept = plan === 'none';
      if (plan === 'stream') this.#body = this.req;
      this.#send(route);
      return;
    }
    const chunks: Buffer[] = [];
    this.req.on('data', (chunk: Buffer) => chunks.push(chunk));
    this.req.once('end', () => {
      this.#body = Buffer.concat(chunks);
      this.#bodyKept = true;
      this.#send(route);
    });
    // Only the app's side can fail here: it went away mid-body.
    this.req.once('error', (err) => {
      this.#clientGone = true;
      this.#fail(err);
    });
  }

  #send(route: Route): void {
    if (this.#clientGone) {
      // The app went away while the request waited (for a token, a replay or its body): send nothing.
      this.#code = 'CLIENT_CLOSED';
      this.#finish();
      return;
    }
    const headers = upstreamRequestHeaders(this.req.rawHeaders, route.inject.header, this.#authorization);
    if (this.#madeRequestId) headers.push(...this.#madeRequestId);
    const method = this.req.method ?? 'GET';
    const proof = this.deps.dpop.proofHeader(route, this.#token, method, this.#path);
    if (proof) headers.push(...proof);
    this.#holding = holds401(route, this.#token, this.#bodyKept, this.#replayed);
    this.#proofSent = proof !== undefined;
    this.#upstream = this.deps.forwarder.send(route, { method, path: this.#path, headers, body: this.#body }, this.#madeRequestId, this);
  }

  upstreamHeaders(statusCode: number, headers: string[]): void {
    // Every answer to a proof may carry a nonce; a 401 asking for one is retried once (even without retryOn401).
    const nonceAsked = this.#proofSent && this.deps.dpop.answered(this.#route as Route, statusCode, headers);
    if (nonceAsked && this.#bodyKept && !this.#nonceRetried) this.#held = new Held401(statusCode, headers, true);
    else if (this.#holding && statusCode === 401) this.#held = new Held401(statusCode, headers);
    else this.res.writeHead(statusCode, headers);
  }

  upstreamData(chunk: Buffer): boolean {
    const held = this.#held;
    if (held && held.add(chunk)) return true;
    // Too large to hold: the 401 goes to the app as it is, and streams on.
    if (held) return this.#handOver(held);
    return this.res.write(chunk);
  }

  whenDrained(resume: () => void): void {
    this.res.once('drain', resume);
  }

  upstreamEnd(): void {
    this.#upstream = undefined;
    const route = this.#route as Route;
    const token = this.#token;
    const held = this.#held;
    this.#held = undefined;
    if (held?.nonceChallenge && token) {
      // Same token, a new proof with the vendor's nonce: once.
      this.#nonceRetried = true;
      return this.#send(route);
    }
    if (held && token) return this.#replay(route, token, held);
    this.res.end();
    if (token && this.res.statusCode === 401) retireAfter401(this.deps.manager, this.deps.observer, route, token);
    this.#finish();
  }

  upstreamFailed(err: SidecarError): void {
    this.#upstream = undefined;
    this.#held = undefined;
    this.#fail(err);
  }

  /** The vendor refused the token: get a different one and replay once; the replay's answer, 401 or not, goes to the app. */
  #replay(route: Route, token: Token, held: Held401): void {
    tokenForReplay(this.deps.manager, this.deps.observer, route, token).then((fresh) => {
      if (fresh && !this.#clientGone) {
        this.#replayed = true;
        this.#useToken(route, fresh);
        this.#send(route);
        return;
      }
      this.#handOver(held);
      this.res.end();
      this.#finish();
    }, this.#fail);
  }

  /** Write a held answer to the app (the rest of its body, if any, follows as it comes). */
  #handOver(held: Held401): boolean {
    this.#held = undefined;
    this.res.writeHead(held.statusCode, held.headers);
    let more = true;
    for (const chunk of held.chunks) more = this.res.write(chunk);
    return more;
  }

  readonly #fail = (err: unknown): void => {
    const e = toSidecarError(err, this.#route?.name);
    this.#code = this.#clientGone ? 'CLIENT_CLOSED' : e.code;
    if (this.#clientGone || e.code === 'CLIENT_CLOSED') {
      this.#code = 'CLIENT_CLOSED';
      if (!this.res.destroyed) this.res.destroy();
    } else {
      sendError(this.res, e, this.#madeRequestId && { 'x-request-id': this.#requestId });
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
    // Nobody read an answer: log what nginx logs for it.
    const status = this.#code === 'CLIENT_CLOSED' ? statusOf('CLIENT_CLOSED') : this.res.statusCode;
    this.deps.observer.completed?.(route, status, durationMs / 1000);
    this.deps.accessLog.write({
      route,
      method: this.req.method,
      status,
      durationMs: Math.round(durationMs * 100) / 100,
      tokenSource: this.#source,
      tokenWaitMs: this.#tokenWaitMs === undefined ? undefined : Math.round(this.#tokenWaitMs * 100) / 100,
      replayed: this.#replayed,
      code: this.#code,
      requestId: this.#requestId,
    });
  }
}

/** Inside an accepted CONNECT tunnel, an origin-form target is read as absolute-form to the tunnel's host (RFC 9112 §3.2.2). */
function requestTarget(req: IncomingMessage): string {
  const url = req.url ?? '/';
  const authority = tunnelAuthority(req.socket);
  return authority !== undefined && url.startsWith('/') ? `http://${authority}${url}` : url;
}
