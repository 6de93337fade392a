/**
 * The app-facing request handler: match → token → forward → (on 401) replay once. Every path ends in a response:
 * the vendor's, or a problem+json from errors-to-http. The route table and routes are read once per request from
 * an immutable snapshot, so a hot reload never changes a request half-way.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import type { Route } from '../config/types.js';
import { SidecarError, toSidecarError } from '../errors.js';
import type { TokenManager, TokenSource } from '../tokens/manager.js';
import type { Token } from '../tokens/token.js';
import { sendError } from './errors-to-http.js';
import type { Forwarder, UpstreamCall } from './forward.js';
import { countHostHeaders, formatInjection, upstreamRequestHeaders } from './headers.js';
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

export class ProxyHandler {
  #snapshot: ProxySnapshot;
  readonly #manager: TokenManager;
  readonly #forwarder: Forwarder;
  readonly #log: Logger;
  readonly #accessLog: AccessLog;
  readonly #observer: RequestObserver;

  constructor(opts: ProxyHandlerOptions, snapshot: ProxySnapshot) {
    this.#manager = opts.manager;
    this.#forwarder = opts.forwarder;
    this.#log = opts.log;
    this.#accessLog = opts.accessLog ?? pinoAccessLog(opts.log);
    this.#observer = opts.observer ?? {};
    this.#snapshot = snapshot;
  }

  setSnapshot(snapshot: ProxySnapshot): void {
    this.#snapshot = snapshot;
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    void this.#handle(req, res);
  };

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const startedMs = performance.now();
    const snapshot = this.#snapshot;
    // The app went away before the answer was complete: cancel the upstream request too. undici accepts any
    // EventEmitter that emits 'abort' as a signal; the response itself serves, which spares an AbortController and
    // its EventTarget per request (a measurable share of the hot path).
    let clientGone = false;
    res.once('close', () => {
      if (res.writableFinished) return;
      clientGone = true;
      res.emit('abort');
    });
    let route: Route | undefined;
    let source: Source | undefined;
    let code: string | undefined;
    let replayed = false;
    // Propagate the app's request id, or give the request one, so the vendor, the app and our log line agree.
    const appRequestId = req.headers['x-request-id'];
    const requestId = typeof appRequestId === 'string' ? appRequestId : randomUUID();
    if (appRequestId === undefined) res.setHeader('x-request-id', requestId);
    try {
      if (countHostHeaders(req.rawHeaders) > 1) throw new SidecarError('BAD_REQUEST', 'more than one Host header (RFC 9112 §3.2)');
      const match = matchRequest(snapshot.table, req.method ?? 'GET', req.url ?? '/', req.headers.host);
      route = match.route;
      let token: Token | undefined;
      let tokenValue: string;
      if (route.auth.type === 'static') {
        source = 'static';
        tokenValue = route.auth.value.reveal();
      } else {
        token = this.#manager.current(route.name);
        if (token) source = 'memory';
        else ({ token, source } = await this.#manager.get(route.name));
        tokenValue = token.value.reveal();
      }
      const { body, replayable } = hasBody(req) ? await requestBody(req, route) : { body: null, replayable: route.retryOn401 };
      const call: UpstreamCall = {
        method: req.method ?? 'GET',
        path: match.path,
        headers: upstreamHeaders(req, route, tokenValue, appRequestId, requestId),
        body,
        signal: res,
      };
      const held = await this.#forwarder.send(route, call, res, replayable && token !== undefined);
      let sentToken = token;
      if (held && token) {
        const fresh = await this.#manager.afterUnauthorized(route.name, token.fingerprint);
        this.#observer.unauthorized?.(route.name, fresh !== undefined);
        if (fresh && !clientGone) {
          replayed = true;
          sentToken = fresh;
          call.headers = upstreamHeaders(req, route, fresh.value.reveal(), appRequestId, requestId);
          // Never loop: the replay's answer, 401 or not, goes to the app.
          await this.#forwarder.send(route, call, res, false);
        } else {
          held.release();
        }
      }
      if (sentToken && route.retryOn401 && res.statusCode === 401 && (replayed || !held)) {
        // A 401 that was not replayed (streamed body, or the replay itself): still tell the manager, so the next
        // request gets a fresh token. Its rate limit keeps a vendor that refuses everything from hammering the IdP.
        this.#observer.unauthorized?.(route.name, false);
        void this.#manager.afterUnauthorized(route.name, sentToken.fingerprint);
      }
    } catch (err) {
      const e = toSidecarError(err, route?.name);
      code = e.code;
      if (clientGone) {
        code = 'CLIENT_CLOSED';
      } else {
        sendError(res, e);
        if (e.code === 'INTERNAL') this.#log.error({ err: e.cause instanceof Error ? e.cause.message : String(e.cause), route: route?.name }, 'internal error');
      }
    }
    const durationMs = performance.now() - startedMs;
    this.#observer.completed?.(route?.name, res.statusCode, durationMs / 1000);
    this.#accessLog.write({
      route: route?.name,
      method: req.method,
      status: res.statusCode,
      durationMs: Math.round(durationMs * 100) / 100,
      tokenSource: source,
      replayed,
      code,
      requestId,
    });
  }
}

/** The app's headers as the vendor gets them: the token injected, and a request id added if the app sent none. */
function upstreamHeaders(req: IncomingMessage, route: Route, token: string, fromApp: string | string[] | undefined, requestId: string): string[] {
  const headers = upstreamRequestHeaders(req.rawHeaders, route.inject.header, formatInjection(route.inject.format, token));
  if (fromApp === undefined) headers.push('x-request-id', requestId);
  return headers;
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * The request body as it will be sent: kept in memory when it is small and sized (so a 401 can be replayed with
 * the same bytes), streamed otherwise (and then not replayable).
 */
async function requestBody(req: IncomingMessage, route: Route): Promise<{ body: Buffer | IncomingMessage; replayable: boolean }> {
  const lengthHeader = req.headers['content-length'];
  const length = lengthHeader === undefined ? undefined : Number(lengthHeader);
  if (!route.retryOn401 || length === undefined || length > route.replayBodyLimitBytes) return { body: req, replayable: false };
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return { body: Buffer.concat(chunks), replayable: true };
}
