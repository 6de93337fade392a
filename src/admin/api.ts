/**
 * The operator API on the admin listener: metrics and per-route token state, plus two fleet-wide actions. Actions
 * change state, so they are accepted only from loopback (`kubectl exec` / `kubectl port-forward`), never from the
 * pod network that reaches the probes.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Route } from '../config/types.js';
import { isSidecarError } from '../errors.js';
import type { TokenManager } from '../tokens/manager.js';
import type { Metrics } from './metrics.js';
import { sendJson } from './server.js';

export interface AdminApiDeps {
  metrics: Metrics;
  manager: TokenManager;
  routes: () => readonly Route[];
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|::ffff:127\.\d+\.\d+\.\d+)$/;

export function isLoopbackAddress(address: string | undefined): boolean {
  return LOOPBACK.test(address ?? '');
}
const ROUTE_ACTION = /^\/v1\/routes\/([a-z0-9-]+)\/(refresh|token)$/;

export function adminApi(deps: AdminApiDeps): (req: IncomingMessage, res: ServerResponse) => Promise<boolean> {
  return async (req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (req.method === 'GET' && path === '/metrics') {
      const { contentType, body } = await deps.metrics.render();
      res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return true;
    }
    if (req.method === 'GET' && path === '/v1/routes') {
      sendJson(res, 200, { routes: deps.routes().map((r) => describeRoute(r, deps.manager)) });
      return true;
    }
    const action = ROUTE_ACTION.exec(path);
    if (!action) return false;
    const [, name = '', what] = action;
    const expected = what === 'refresh' ? 'POST' : 'DELETE';
    if (req.method !== expected) {
      res.setHeader('allow', expected);
      sendJson(res, 405, { error: `use ${expected}` });
      return true;
    }
    if (!isLoopbackAddress(req.socket.remoteAddress)) {
      sendJson(res, 403, { error: 'route actions are accepted from loopback only' });
      return true;
    }
    const route = deps.routes().find((r) => r.name === name);
    if (!route) {
      sendJson(res, 404, { error: `no route named ${name}` });
      return true;
    }
    if (route.auth.type !== 'oauth2') {
      sendJson(res, 409, { error: `route ${name} uses a static credential` });
      return true;
    }
    try {
      if (what === 'refresh') {
        const { token, source } = await deps.manager.refresh(name);
        sendJson(res, 200, { route: name, action: 'refreshed', fingerprint: token.fingerprint, source, expiresAt: new Date(token.expiresAtMs).toISOString() });
      } else {
        const { fingerprint, fleetWide } = await deps.manager.revoke(name);
        sendJson(res, 200, { route: name, action: 'revoked', fingerprint: fingerprint ?? null, fleetWide });
      }
    } catch (err) {
      sendJson(res, 502, { route: name, error: isSidecarError(err) ? err.code : 'INTERNAL', detail: isSidecarError(err) ? err.message : 'unexpected error' });
    }
    return true;
  };
}

function describeRoute(route: Route, manager: TokenManager): Record<string, unknown> {
  const base = {
    name: route.name,
    match: route.match,
    upstream: route.upstreamOrigin + (route.upstreamBasePath === '/' ? '' : route.upstreamBasePath),
    auth: route.auth.type,
    warm: route.warm,
  };
  if (route.auth.type === 'static') return { ...base, token: { source: 'static' } };
  const s = manager.state(route.name);
  return {
    ...base,
    token: {
      source: s?.source ?? null,
      fingerprint: s?.fingerprint ?? null,
      expiresAt: s?.expiresAtMs === undefined ? null : new Date(s.expiresAtMs).toISOString(),
      lastRefresh: s?.lastRefreshMs === undefined ? null : new Date(s.lastRefreshMs).toISOString(),
      lastError: s?.lastError ? { code: s.lastError.code, message: s.lastError.message, at: new Date(s.lastError.atMs).toISOString() } : null,
      consecutiveFailures: s?.consecutiveFailures ?? 0,
    },
  };
}
