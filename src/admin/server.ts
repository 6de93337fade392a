/**
 * The admin listener: probes, and the extra handlers (metrics, the routes API). Its own errors are problem+json
 * from the one code table. Liveness never depends on the token endpoint
 * or the store (an IdP outage must not restart-loop pods); readiness is documented in docs/operations.md.
 */
import { createServer, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http';
import { SidecarError, toSidecarError } from '../core/errors.js';
import { answerClientError, sendError } from '../http/problem.js';

export interface Readiness {
  ready: boolean;
  checks: Record<string, 'ok' | 'degraded' | 'failing' | string>;
}

export interface AdminRoutes {
  readiness(): Readiness;
  /** Extra handlers (metrics, routes API); return false when the path is not theirs. */
  extra?: (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>;
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

/**
 * `listener`: Node's server settings (timeouts); the caller sets `maxConnections` on the result. Malformed requests and
 * clients that reset are answered or dropped by `answerClientError`, never an unhandled error.
 */
export function createAdminServer(routes: AdminRoutes, listener: ServerOptions = {}): Server {
  const server = createServer(listener, (req, res) => {
    void (async () => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method === 'GET' && path === '/healthz') return sendJson(res, 200, { status: 'ok' });
      if (req.method === 'GET' && path === '/readyz') {
        const r = routes.readiness();
        return sendJson(res, r.ready ? 200 : 503, { status: r.ready ? 'ready' : 'not ready', checks: r.checks });
      }
      if (routes.extra && (await routes.extra(req, res))) return;
      sendError(res, new SidecarError('NOT_FOUND', `no such path: ${path ?? '/'}`));
    })().catch((err: unknown) => sendError(res, toSidecarError(err)));
  });
  server.on('clientError', answerClientError);
  return server;
}
