/**
 * The operator API on the admin listener: metrics and per-route token state, plus two fleet-wide actions. Actions
 * change state, so they are accepted only from loopback (`kubectl exec` / `kubectl port-forward`), never from the
 * pod network that reaches the probes.
 */
import { authSummary } from '../config/describe.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Route } from '../config/types.js';
import { SidecarError, toSidecarError } from '../core/errors.js';
import { sendError } from '../http/problem.js';
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
    try {
      sendJson(res, 200, await routeAction(deps, req, name, what === 'refresh' ? 'refresh' : 'revoke'));
    } catch (err) {
      // Statuses from the one code table: TOKEN_UNAVAILABLE 503 with Retry-After, TOKEN_REJECTED 502, …
      sendError(res, toSidecarError(err, name));
    }
    return true;
  };
}

async function routeAction(deps: AdminApiDeps, req: IncomingMessage, name: string, what: 'refresh' | 'revoke'): Promise<Record<string, unknown>> {
  const expected = what === 'refresh' ? 'POST' : 'DELETE';
  if (req.method !== expected) throw new SidecarError('METHOD_NOT_ALLOWED', `use ${expected}`, { allow: expected });
  if (!isLoopbackAddress(req.socket.remoteAddress)) throw new SidecarError('FORBIDDEN', 'route actions are accepted from loopback only');
  const route = deps.routes().find((r) => r.name === name);
  if (!route) throw new SidecarError('ROUTE_NOT_FOUND', `no route named ${name}`);
  if (route.auth.type !== 'oauth2') throw new SidecarError('STATIC_CREDENTIAL', `route ${name} uses a static credential`, { route: name });
  if (what === 'refresh') {
    const { token, source } = await deps.manager.refresh(name);
    return { route: name, action: 'refreshed', fingerprint: token.fingerprint, source, expiresAt: new Date(token.expiresAtMs).toISOString() };
  }
  const { fingerprint, fleetWide } = await deps.manager.revoke(name);
  return { route: name, action: 'revoked', fingerprint: fingerprint ?? null, fleetWide };
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
    oauth: authSummary(route.auth),
    token: {
      credential: s?.credential ?? null,
      source: s?.source ?? null,
      fingerprint: s?.fingerprint ?? null,
      expiresAt: s?.expiresAtMs === undefined ? null : new Date(s.expiresAtMs).toISOString(),
      lastRefresh: s?.lastRefreshMs === undefined ? null : new Date(s.lastRefreshMs).toISOString(),
      lastError: s?.lastError ? { code: s.lastError.code, message: s.lastError.message, at: new Date(s.lastError.atMs).toISOString() } : null,
      consecutiveFailures: s?.consecutiveFailures ?? 0,
    },
  };
}
