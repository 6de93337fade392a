/**
 * WebSocket through a route. The app's opening handshake (RFC 6455 §4.1) is matched like a request, gets the route's
 * token (and a DPoP proof for the handshake GET, RFC 9449 §7.1) and goes to the vendor; the vendor's 101 (§4.2.2) goes
 * back to the app and from then on the bytes are spliced both ways (handover.ts). A 401 on the handshake is answered as
 * a request's: the token is retired and the handshake retried once with a fresh one; any other answer than 101 goes to
 * the app as it is, then the connection closes (RFC 6455 §4.1: the client fails the connection on it).
 *
 * Hand-written on undici rather than http-proxy-3, by measurement (docs/streaming.md has the figures): the spliced
 * bytes cost the same through both (each pipes two sockets), and so does the handshake; but http-proxy-3 writes a
 * non-101 answer to the app at once (a 401 cannot be held back for the retry), sets no idle timeout, and brings two
 * runtime dependencies (debug, follow-redirects) and a second HTTP client next to undici. This file reuses undici's
 * connect timeout, TLS options and header handling, and the exchange's 401 and DPoP rules.
 *
 * One undici Client per handshake (and its one retry), never the route's pool: an upgraded connection leaves its
 * client for good, and a pool offering h2 would turn the handshake into an RFC 8441 extended CONNECT.
 */
import { STATUS_CODES, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { Client } from '../http/undici.js';
import type { Route } from '../config/types.js';
import { SidecarError, statusOf, toSidecarError } from '../core/errors.js';
import type { Token } from '../core/token.js';
import { sendErrorOnSocket } from '../http/problem.js';
import type { Logger } from '../log.js';
import type { TokenManager, TokenSource } from '../tokens/manager.js';
import type { AccessLog } from './access-log.js';
import type { UpstreamDpop } from './dpop-upstream.js';
import { countHostHeaders, downstreamResponseHeaders, upstreamRequestHeaders } from './headers.js';
import { matchRequest, type RouteTable } from './match.js';
import { Held401, holds401, retireAfter401, tokenForReplay, type ReplayObserver } from './replay.js';
import { closeAfterAnswer, serveWithoutUpgrade, Splice, statusLine, type SpliceReport } from './handover.js';

/** What a handshake needs from the proxy handler (its own exchange dependencies, structurally). */
export interface UpgradeDeps {
  readonly manager: TokenManager;
  readonly log: Logger;
  readonly accessLog: AccessLog;
  readonly observer: ReplayObserver & { completed?(route: string | undefined, status: number, durationS: number): void };
  readonly nextRequestId: () => string;
  readonly dpop: UpstreamDpop;
  injection(route: Route, token: Token): string;
}

export type UpgradeListener = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

/** The upgraded connections of one proxy handler: opened by its 'upgrade' listener, closed at shutdown. */
export class Upgrades {
  readonly #open = new Set<Splice>();

  constructor(
    private readonly deps: UpgradeDeps,
    private readonly table: () => RouteTable,
    /** The request target as the exchange reads it (inside an accepted CONNECT tunnel: absolute-form). */
    private readonly target: (req: IncomingMessage) => string,
  ) {}

  listener(server: Server): UpgradeListener {
    return (req, socket, head) => {
      if (!isWebSocket(req.headers.upgrade)) {
        serveWithoutUpgrade(server, req, socket, head);
        return;
      }
      new Handshake(this.deps, this, req, socket, head).start(this.table(), this.target(req));
    };
  }

  /** Splice `app` and `vendor` (after the 101 went to the app) until both are closed. */
  splice(route: Route, app: Duplex, vendor: Duplex, appHead: Buffer): void {
    // RFC 6455 §5.5.2 pings are traffic too: an app that pings stays open however quiet its messages are.
    const idleMs = route.streaming ? undefined : route.timeouts.idleMs;
    const splice = new Splice(app, vendor, idleMs, (report: SpliceReport) => {
      this.#open.delete(splice);
      const { end, first, durationMs } = report;
      this.deps.log.info({ event: 'websocket.closed', route: route.name, end, first, durationMs: Math.round(durationMs) }, 'websocket closed');
    });
    this.#open.add(splice);
    splice.start(appHead);
  }

  /** Shutdown: the HTTP server's closeAllConnections() does not reach upgraded sockets (Node detaches them). */
  closeAll(): void {
    for (const splice of this.#open) splice.close();
  }
}

/** RFC 6455 §4.2.1: `Upgrade` lists "websocket", compared ASCII case-insensitively (RFC 9110 §7.8: a list of protocols). */
function isWebSocket(upgrade: string | undefined): boolean {
  if (upgrade === undefined) return false;
  return upgrade.split(',').some((p) => p.trim().split('/')[0]?.toLowerCase() === 'websocket');
}

type Source = TokenSource | 'static';

/**
 * One opening handshake, from match to the 101 (or the answer that replaces it) and its log line. It is the undici
 * dispatch handler of its attempts (the callback API undici 7 calls, as forward.ts uses it).
 */
class Handshake {
  readonly #startedMs = performance.now();
  #route: Route | undefined;
  #path = '/';
  #source: Source | undefined;
  #tokenWaitMs: number | undefined;
  #token: Token | undefined;
  #authorization = '';
  #client: Client | undefined;
  #abort: ((err?: Error) => void) | undefined;
  #resume: () => void = noop;
  #holding = false;
  #held: Held401 | undefined;
  #replayed = false;
  #proofSent = false;
  #nonceRetried = false;
  /** The status line the app got (or is getting): 101, the vendor's, or ours. */
  #status = 0;
  #answered = false;
  #code: string | undefined;
  #appGone = false;
  #done = false;
  readonly #madeRequestId: readonly string[] | undefined;
  readonly #requestId: string;

  constructor(
    private readonly deps: UpgradeDeps,
    private readonly upgrades: Upgrades,
    private readonly req: IncomingMessage,
    private readonly socket: Duplex,
    private readonly head: Buffer,
  ) {
    const fromApp = req.headers['x-request-id'];
    this.#requestId = typeof fromApp === 'string' ? fromApp : deps.nextRequestId();
    this.#madeRequestId = typeof fromApp === 'string' ? undefined : ['x-request-id', this.#requestId];
  }

  start(table: RouteTable, target: string): void {
    // Node hands an upgraded socket over with no listener of its own: a reset mid-handshake must not end the process.
    this.socket.on('error', noop);
    this.socket.on('close', this.#onAppClose);
    try {
      if (countHostHeaders(this.req.rawHeaders) > 1) throw new SidecarError('BAD_REQUEST', 'more than one Host header (RFC 9112 §3.2)');
      if (this.req.method !== 'GET') throw new SidecarError('BAD_REQUEST', 'a WebSocket opening handshake is a GET (RFC 6455 §4.1)');
      const match = matchRequest(table, 'GET', target, this.req.headers.host);
      const route = (this.#route = match.route);
      this.#path = match.path;
      if (!route.websocket) {
        throw new SidecarError('UPGRADE_NOT_ALLOWED', `route ${route.name} does not allow WebSocket upgrades: set "websocket: true" on it in routes.yaml`, { route: route.name });
      }
      if (route.auth.type === 'static') {
        this.#source = 'static';
        this.#authorization = route.auth.value.reveal();
        return this.#send(route);
      }
      const token = this.deps.manager.current(route.name);
      if (token) {
        this.#source = 'memory';
        this.#useToken(route, token);
        return this.#send(route);
      }
      this.deps.manager.get(route.name).then((result) => {
        this.#tokenWaitMs = performance.now() - this.#startedMs;
        this.#source = result.source;
        this.#useToken(route, result.token);
        this.#send(route);
      }, this.#fail);
    } catch (err) {
      this.#fail(err);
    }
  }

  #useToken(route: Route, token: Token): void {
    this.#token = token;
    this.#authorization = this.deps.injection(route, token);
  }

  #send(route: Route): void {
    if (this.#appGone) {
      this.#code = 'CLIENT_CLOSED';
      return this.#finish();
    }
    // Sec-WebSocket-Key, -Version, -Protocol and -Extensions are end-to-end and travel as they are; undici writes
    // `Connection: upgrade` and `Upgrade: websocket` itself (the app's copies are hop-by-hop and dropped).
    const headers = upstreamRequestHeaders(this.req.rawHeaders, route.inject.header, this.#authorization);
    if (this.#madeRequestId) headers.push(...this.#madeRequestId);
    const proof = this.deps.dpop.proofHeader(route, this.#token, 'GET', this.#path);
    if (proof) headers.push(...proof);
    this.#proofSent = proof !== undefined;
    this.#holding = holds401(route, this.#token, true, this.#replayed);
    this.#client ??= handshakeClient(route);
    this.#client.dispatch({ path: this.#path, method: 'GET', headers, upgrade: 'websocket' }, this);
  }

  onConnect(abort: (err?: Error) => void): void {
    this.#abort = abort;
    if (this.#appGone) abort(clientClosed(this.#route));
  }

  /** An answer other than 101: held (a 401 to retry on) or written to the app as it is. */
  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode < 200) return true;
    this.#resume = resume;
    const route = this.#route as Route;
    const headers = downstreamResponseHeaders(rawHeaders, this.#madeRequestId);
    const nonceAsked = this.#proofSent && this.deps.dpop.answered(route, statusCode, headers);
    if (nonceAsked && !this.#nonceRetried) this.#held = new Held401(statusCode, headers, true);
    else if (this.#holding && statusCode === 401) this.#held = new Held401(statusCode, headers);
    else this.#writeHead(statusCode, statusText, headers);
    return true;
  }

  onData(chunk: Buffer): boolean {
    const held = this.#held;
    if (held && held.add(chunk)) return true;
    if (held) return this.#handOver(held);
    return this.#write(chunk);
  }

  onComplete(): void {
    this.#abort = undefined;
    const route = this.#route as Route;
    const token = this.#token;
    const held = this.#held;
    this.#held = undefined;
    if (held?.nonceChallenge && token) {
      // RFC 9449 §9: same token, a new proof with the vendor's nonce, once.
      this.#nonceRetried = true;
      return this.#send(route);
    }
    if (held && token) return this.#replay(route, token, held);
    closeAfterAnswer(this.socket);
    if (token && this.#status === 401) retireAfter401(this.deps.manager, this.deps.observer, route, token);
    this.#finish();
  }

  onError(err: Error): void {
    this.#abort = undefined;
    this.#held = undefined;
    this.#fail(handshakeError(err, this.#route));
  }

  /** The vendor's 101: relay it, then splice. From here undici has let go of `vendor` (no listener of its own left). */
  onUpgrade(statusCode: number, rawHeaders: Buffer[] | string[] | null, vendor: Duplex): void {
    vendor.on('error', noop);
    this.#abort = undefined;
    const route = this.#route as Route;
    if (this.#appGone || this.socket.destroyed) {
      vendor.destroy();
      this.#code = 'CLIENT_CLOSED';
      return this.#finish();
    }
    const raw = (rawHeaders ?? []).map((h) => (typeof h === 'string' ? Buffer.from(h, 'latin1') : h));
    const headers = downstreamResponseHeaders(raw, this.#madeRequestId);
    if (this.#proofSent) this.deps.dpop.answered(route, statusCode, headers);
    // RFC 6455 §4.2.2: the 101 carries `Upgrade: websocket` and `Connection: Upgrade` (hop-by-hop, so written here),
    // and the vendor's Sec-WebSocket-Accept (computed from the app's key, which went through unchanged).
    this.#status = 101;
    this.#answered = true;
    this.socket.write(statusLine(101, 'Switching Protocols', ['Connection', 'Upgrade', 'Upgrade', 'websocket', ...headers]), 'latin1');
    this.socket.off('close', this.#onAppClose);
    this.upgrades.splice(route, this.socket, vendor, this.head);
    this.#finish();
  }

  #writeHead(statusCode: number, statusText: string, headers: string[]): void {
    this.#status = statusCode;
    this.#answered = true;
    // The app's connection ends after this answer (the handshake took it out of HTTP): the body may run to the close.
    this.socket.write(statusLine(statusCode, statusText, [...headers, 'connection', 'close']), 'latin1');
  }

  #write(chunk: Buffer): boolean {
    const more = this.socket.write(chunk);
    if (!more) this.socket.once('drain', this.#resume);
    return more;
  }

  #handOver(held: Held401): boolean {
    this.#held = undefined;
    this.#writeHead(held.statusCode, STATUS_CODES[held.statusCode] ?? '', held.headers);
    let more = true;
    for (const chunk of held.chunks) more = this.#write(chunk);
    return more;
  }

  /** The vendor refused the token on the handshake: a different token and one more handshake, as a request replays. */
  #replay(route: Route, token: Token, held: Held401): void {
    tokenForReplay(this.deps.manager, this.deps.observer, route, token).then((fresh) => {
      if (fresh && !this.#appGone) {
        this.#replayed = true;
        this.#useToken(route, fresh);
        return this.#send(route);
      }
      this.#handOver(held);
      closeAfterAnswer(this.socket);
      this.#finish();
    }, this.#fail);
  }

  readonly #fail = (err: unknown): void => {
    const e = toSidecarError(err, this.#route?.name);
    if (this.#appGone || e.code === 'CLIENT_CLOSED') {
      this.#code = 'CLIENT_CLOSED';
      this.socket.destroy();
    } else {
      this.#code = e.code;
      if (this.#answered) {
        // The vendor's answer was half relayed: cutting the connection is the only honest signal left.
        this.socket.destroy();
      } else {
        this.#status = e.status;
        sendErrorOnSocket(this.socket, e);
      }
      if (e.code === 'INTERNAL') this.deps.log.error({ err: e.cause instanceof Error ? e.cause.message : String(e.cause), route: this.#route?.name }, 'internal error');
    }
    this.#finish();
  };

  readonly #onAppClose = (): void => {
    if (this.#done) return;
    this.#appGone = true;
    this.#abort?.(clientClosed(this.#route));
  };

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    const client = this.#client;
    this.#client = undefined;
    // Its connection is the websocket now, or spent: nothing is left to keep (close(): no error object made).
    if (client) void (this.#status === 101 ? client.close() : client.destroy()).catch(noop);
    const durationMs = performance.now() - this.#startedMs;
    const route = this.#route?.name;
    const status = this.#code === 'CLIENT_CLOSED' ? statusOf('CLIENT_CLOSED') : this.#status;
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

function handshakeClient(route: Route): Client {
  const tls = route.upstreamTls;
  return new Client(route.upstreamOrigin, {
    connect: {
      timeout: route.timeouts.connectMs,
      ...(tls ? { ca: tls.ca, cert: tls.cert, key: tls.key?.reveal(), servername: tls.servername } : {}),
    },
    headersTimeout: route.timeouts.responseMs,
    // The body of a non-101 answer (relayed as it is), under the same rule as any answer of the route.
    bodyTimeout: route.streaming ? 0 : route.timeouts.idleMs,
    allowH2: false,
  });
}

const noop = (): void => undefined;
const clientClosed = (route: Route | undefined) => new SidecarError('CLIENT_CLOSED', 'handshake cancelled by the client', { route: route?.name });

function handshakeError(err: unknown, route: Route | undefined): SidecarError {
  if (err instanceof SidecarError) return err;
  const e = err as { code?: string; name?: string };
  const name = route?.name;
  if (e.name === 'AbortError' || e.code === 'UND_ERR_ABORTED') return new SidecarError('CLIENT_CLOSED', 'handshake cancelled by the client', { route: name, cause: err });
  const origin = route?.upstreamOrigin ?? 'the upstream';
  const t = route?.timeouts;
  const what =
    e.code === 'UND_ERR_CONNECT_TIMEOUT' ? `could not connect within ${t?.connectMs} ms`
    : e.code === 'UND_ERR_HEADERS_TIMEOUT' ? `did not answer the WebSocket handshake within ${t?.responseMs} ms`
    : e.code === 'UND_ERR_BODY_TIMEOUT' ? `stopped sending its answer for ${t?.idleMs} ms`
    : undefined;
  if (what) return new SidecarError('UPSTREAM_TIMEOUT', `${origin} ${what}`, { route: name, cause: err });
  return new SidecarError('UPSTREAM_UNREACHABLE', `${origin} unreachable (${e.code ?? 'error'})`, { route: name, cause: err });
}
