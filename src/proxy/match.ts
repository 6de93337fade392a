/**
 * Request target → route and upstream path. Pure. The upstream origin always comes from the route, never from the
 * request: the path is rebuilt from validated segments and appended to the route's base path, so no target
 * (`..`, `%2e%2e`, `%2f`, `//host`, `http://host`) can reach another host or climb out of the base path.
 */
import type { Route } from '../config/types.js';
import { SidecarError } from '../core/errors.js';

export interface RouteTable {
  /** Routes with a host, by host (`name` or `name:port`), longest prefix first. */
  readonly byHost: ReadonlyMap<string, readonly CompiledRoute[]>;
  /** Routes matched by path only, longest prefix first. */
  readonly anyHost: readonly CompiledRoute[];
}

interface CompiledRoute {
  readonly route: Route;
  readonly prefix: readonly string[];
}

export interface Match {
  route: Route;
  /** Upstream path with the query string, e.g. `/v2/cob/42?x=1`. */
  path: string;
}

export function buildRouteTable(routes: readonly Route[]): RouteTable {
  const compile = (route: Route): CompiledRoute => ({
    route,
    prefix: (route.match.pathPrefix ?? '/').split('/').filter(Boolean),
  });
  const byLength = (a: CompiledRoute, b: CompiledRoute) => b.prefix.length - a.prefix.length;
  const byHost = new Map<string, CompiledRoute[]>();
  const anyHost: CompiledRoute[] = [];
  for (const route of routes) {
    const host = route.match.host;
    if (host === undefined) anyHost.push(compile(route));
    else byHost.set(host, [...(byHost.get(host) ?? []), compile(route)]);
  }
  for (const list of byHost.values()) list.sort(byLength);
  anyHost.sort(byLength);
  return { byHost, anyHost };
}

const ABSOLUTE = /^(https?):\/\/([^/?#]*)(.*)$/i;

export function matchRequest(table: RouteTable, method: string, target: string, hostHeader: string | undefined): Match {
  if (method === 'CONNECT') {
    throw new SidecarError('TUNNEL_NOT_SUPPORTED', 'CONNECT is not supported: call http:// and the sidecar opens TLS to the vendor');
  }
  let host: string | undefined;
  let rest: string;
  let absolute = false;
  if (target.startsWith('/')) {
    host = hostHeader;
    rest = target;
  } else {
    const m = ABSOLUTE.exec(target);
    if (!m) throw new SidecarError('BAD_REQUEST', 'request target must be a path or an absolute http URL');
    const authority = m[2] ?? '';
    if (authority === '' || authority.includes('@')) throw new SidecarError('BAD_REQUEST', 'absolute URL has no valid host');
    // RFC 9112 §3.2.2: with an absolute-form target, the Host header is ignored in favour of the target's authority.
    host = authority;
    rest = m[3] || '/';
    if (!rest.startsWith('/')) rest = `/${rest}`;
    absolute = true;
  }
  const queryAt = rest.indexOf('?');
  const path = queryAt < 0 ? rest : rest.slice(0, queryAt);
  const query = queryAt < 0 ? '' : rest.slice(queryAt);
  if (path.includes('#')) throw new SidecarError('BAD_REQUEST', 'request target must not contain a fragment');
  const segments = splitSegments(path);

  const candidates = candidatesFor(table, host, absolute);
  for (const c of candidates) {
    if (!startsWith(segments, c.prefix)) continue;
    return { route: c.route, path: joinPath(c.route.upstreamBasePath, segments.slice(c.prefix.length), path.endsWith('/')) + query };
  }
  throw new SidecarError('ROUTE_NOT_FOUND', absolute ? `no route for host ${host ?? ''}` : 'no route matches this path');
}

function candidatesFor(table: RouteTable, host: string | undefined, absolute: boolean): readonly CompiledRoute[] {
  const hostRoutes = host === undefined ? undefined : hostMatches(table, host.toLowerCase());
  // Absolute-form names a host: only routes for that host may serve it (no open proxy, no surprises).
  if (absolute) return hostRoutes ?? [];
  return hostRoutes ? [...hostRoutes, ...table.anyHost] : table.anyHost;
}

/** Whether a host route serves `host` (`name` or `name:port`, lowercase), by the rule requests are matched with. */
export function hasHostRoute(table: RouteTable, host: string): boolean {
  return hostMatches(table, host) !== undefined;
}

function hostMatches(table: RouteTable, host: string): readonly CompiledRoute[] | undefined {
  const exact = table.byHost.get(host);
  if (exact) return exact;
  const colon = host.lastIndexOf(':');
  return colon > 0 && !host.endsWith(']') ? table.byHost.get(host.slice(0, colon)) : undefined;
}

/**
 * Raw path → raw segments (empty ones dropped: `//` collapses). Each segment is checked decoded, so an encoded
 * dot-segment or slash is refused rather than passed to a vendor that might decode it.
 */
export function splitSegments(path: string): string[] {
  const out: string[] = [];
  for (const raw of path.split('/')) {
    if (raw === '') continue;
    let decoded = raw;
    if (raw.includes('%')) {
      try {
        decoded = decodeURIComponent(raw);
      } catch {
        throw new SidecarError('BAD_REQUEST', 'malformed percent-encoding in path');
      }
      if (decoded.includes('/')) throw new SidecarError('BAD_REQUEST', 'encoded slash, backslash or NUL in the path');
    }
    // `..;x` is how Tomcat-style servers still read a dot-segment; `\` is a separator on some servers.
    if (decoded.charCodeAt(0) === 0x2e /* . */) {
      const semi = decoded.indexOf(';');
      const bare = semi < 0 ? decoded : decoded.slice(0, semi);
      if (bare === '.' || bare === '..') throw new SidecarError('BAD_REQUEST', 'dot-segments are not allowed in the path');
    }
    if (decoded.includes('\\') || decoded.includes('\0')) throw new SidecarError('BAD_REQUEST', 'encoded slash, backslash or NUL in the path');
    out.push(raw);
  }
  return out;
}

function startsWith(segments: readonly string[], prefix: readonly string[]): boolean {
  if (prefix.length > segments.length) return false;
  for (let i = 0; i < prefix.length; i++) if (segments[i] !== prefix[i]) return false;
  return true;
}

export function joinPath(basePath: string, rest: readonly string[], trailingSlash: boolean): string {
  const base = basePath === '/' ? '' : basePath;
  let out = rest.length === 0 ? base || '/' : `${base}/${rest.join('/')}`;
  if (trailingSlash && !out.endsWith('/')) out += '/';
  return out;
}
