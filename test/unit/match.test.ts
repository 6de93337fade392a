import { beforeAll, describe, expect, it } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import type { Route } from '../../src/config/types.js';
import { SidecarError } from '../../src/core/errors.js';
import { buildRouteTable, matchRequest, type Match, type RouteTable } from '../../src/proxy/match.js';

/** Routes through the real config path (YAML → schema → Route), with static auth: matching does not need tokens. */
async function tableFrom(routes: string): Promise<RouteTable> {
  const loaded = await loadConfigText(`version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:\n${routes}`);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  return buildRouteTable(loaded.config.routes);
}

const route = (name: string, match: string, upstream: string) => `
  - name: ${name}
    match: ${match}
    upstream: ${upstream}
    auth: { type: static, value: key-${name} }
`;

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof SidecarError) return err.code;
    throw err;
  }
  return 'matched';
}

/** Where the vendor would actually be asked: the route's origin joined with the mapped path. */
function upstreamUrl(m: Match): URL {
  return new URL(m.path, m.route.upstreamOrigin);
}

let table: RouteTable;
let rootTable: RouteTable;

beforeAll(async () => {
  table = await tableFrom(
    [
      route('pix', '{ pathPrefix: /pix }', 'https://api.vendor.example/v2'),
      route('pix-cob', '{ pathPrefix: /pix/cob/ }', 'https://cob.vendor.example/v3'),
      route('bare', '{ pathPrefix: /bare }', 'https://bare.vendor.example'),
      route('vendor-host', '{ host: api.vendor.example }', 'https://api.vendor.example/v2'),
      route('vendor-special', '{ host: api.vendor.example, pathPrefix: /special }', 'https://special.vendor.example/s'),
    ].join(''),
  );
  rootTable = await tableFrom(route('root', '{ pathPrefix: / }', 'https://root.vendor.example/v2'));
});

const get = (target: string, host?: string) => matchRequest(table, 'GET', target, host);

describe('route selection', () => {
  it('longest path prefix wins, whatever the order of the routes in the file', () => {
    expect(get('/pix/cob/42')).toMatchObject({ route: { name: 'pix-cob' }, path: '/v3/42' });
    expect(get('/pix/cobx/42')).toMatchObject({ route: { name: 'pix' }, path: '/v2/cobx/42' });
    expect(get('/pix/other')).toMatchObject({ route: { name: 'pix' }, path: '/v2/other' });
    expect(get('/pix')).toMatchObject({ route: { name: 'pix' }, path: '/v2' });
  });

  it('prefixes match at segment boundaries only', () => {
    expect(codeOf(() => get('/pixel'))).toBe('ROUTE_NOT_FOUND');
    expect(codeOf(() => get('/pix-2/x'))).toBe('ROUTE_NOT_FOUND');
    expect(codeOf(() => get('/PIX/x'))).toBe('ROUTE_NOT_FOUND');
    expect(codeOf(() => get('/'))).toBe('ROUTE_NOT_FOUND');
    expect(codeOf(() => get('/unknown/x'))).toBe('ROUTE_NOT_FOUND');
  });

  it('host routes serve requests by Host header, case-insensitively and with or without a port', () => {
    expect(get('/x', 'api.vendor.example')).toMatchObject({ route: { name: 'vendor-host' }, path: '/v2/x' });
    expect(get('/x', 'API.Vendor.Example:80')).toMatchObject({ route: { name: 'vendor-host' }, path: '/v2/x' });
    // A host route with a prefix beats the bare host route.
    expect(get('/special/a', 'api.vendor.example')).toMatchObject({ route: { name: 'vendor-special' }, path: '/s/a' });
    // Another Host falls back to path-only routes.
    expect(get('/pix/x', '127.0.0.1:15080')).toMatchObject({ route: { name: 'pix' }, path: '/v2/x' });
    expect(codeOf(() => get('/x', '127.0.0.1:15080'))).toBe('ROUTE_NOT_FOUND');
  });

  it('absolute-form targets are served by the host route named in the target, not by the Host header', () => {
    expect(get('http://api.vendor.example/x')).toMatchObject({ route: { name: 'vendor-host' }, path: '/v2/x' });
    expect(get('http://api.vendor.example/x', 'evil.example')).toMatchObject({ route: { name: 'vendor-host' } });
    expect(get('HTTP://API.VENDOR.EXAMPLE:80/special/b')).toMatchObject({ route: { name: 'vendor-special' }, path: '/s/b' });
    // An empty path is `/`, whose trailing slash is kept like any other.
    expect(get('http://api.vendor.example')).toMatchObject({ route: { name: 'vendor-host' }, path: '/v2/' });
    expect(get('http://api.vendor.example?q=1')).toMatchObject({ route: { name: 'vendor-host' }, path: '/v2/?q=1' });
  });

  it('absolute-form to a host no route names is ROUTE_NOT_FOUND, even when its path matches a prefix route', () => {
    expect(codeOf(() => get('http://evil.example/pix/x'))).toBe('ROUTE_NOT_FOUND');
    expect(codeOf(() => get('https://evil.example/pix/x'))).toBe('ROUTE_NOT_FOUND');
    expect(codeOf(() => get('http://127.0.0.1:15080/pix/x'))).toBe('ROUTE_NOT_FOUND');
    expect(codeOf(() => get('http://evil.example/pix/x', 'api.vendor.example'))).toBe('ROUTE_NOT_FOUND');
  });

  it('refuses malformed targets and CONNECT', () => {
    expect(codeOf(() => get('http://api.vendor.example@evil.example/x'))).toBe('BAD_REQUEST');
    expect(codeOf(() => get('http:///x'))).toBe('BAD_REQUEST');
    expect(codeOf(() => get('ftp://api.vendor.example/x'))).toBe('BAD_REQUEST');
    expect(codeOf(() => get('*'))).toBe('BAD_REQUEST');
    expect(codeOf(() => get('pix/x'))).toBe('BAD_REQUEST');
    expect(codeOf(() => get('/pix/a#frag'))).toBe('BAD_REQUEST');
    expect(codeOf(() => matchRequest(table, 'CONNECT', 'api.vendor.example:443', 'api.vendor.example:443'))).toBe('TUNNEL_NOT_SUPPORTED');
    expect(codeOf(() => matchRequest(table, 'CONNECT', '/pix/x', undefined))).toBe('TUNNEL_NOT_SUPPORTED');
  });
});

describe('path mapping', () => {
  it('passes the query string on byte for byte', () => {
    const query = '?b=2&a=1&x=%2F%20+y&&z=%zz&e=&u=%C3%A9&p=/../../etc&q=a?b';
    expect(get(`/pix/cob${query}`).path).toBe(`/v3${query}`);
    expect(get(`/pix${query}`).path).toBe(`/v2${query}`);
    expect(get(`/pix/a/${query}`).path).toBe(`/v2/a/${query}`);
    expect(get(`http://api.vendor.example/x${query}`).path).toBe(`/v2/x${query}`);
  });

  it('keeps trailing slashes and collapses empty segments', () => {
    expect(get('/pix/').path).toBe('/v2/');
    expect(get('/pix//').path).toBe('/v2/');
    expect(get('/pix/cob/42/').path).toBe('/v3/42/');
    expect(get('/pix/a//b').path).toBe('/v2/a/b');
    expect(get('/pix/a/b/').path).toBe('/v2/a/b/');
  });

  it('joins onto a base path of / without doubling slashes', () => {
    expect(get('/bare/x/y').path).toBe('/x/y');
    expect(get('/bare').path).toBe('/');
    expect(get('/bare/').path).toBe('/');
    expect(get('/bare?x=1').path).toBe('/?x=1');
    expect(matchRequest(rootTable, 'GET', '/', undefined).path).toBe('/v2/');
    expect(matchRequest(rootTable, 'GET', '/a', undefined).path).toBe('/v2/a');
    expect(matchRequest(rootTable, 'GET', '/a/', undefined).path).toBe('/v2/a/');
  });

  it('keeps encoded characters that are not separators as they were sent', () => {
    expect(get('/pix/a%20b/%C3%A9').path).toBe('/v2/a%20b/%C3%A9');
    expect(get('/pix/a;v=1/b').path).toBe('/v2/a;v=1/b');
  });
});

describe('path traversal and host smuggling', () => {
  it.each([
    '/pix/../x',
    '/pix/..',
    '/pix/./x',
    '/pix/%2e%2e/x',
    '/pix/%2E%2E/x',
    '/pix/.%2e/x',
    '/pix/%2e./x',
    '/pix/%2e/x',
    '/pix/a%2fb',
    '/pix/a%2Fb',
    '/pix/..%2f..%2fx',
    '/pix/a%5cb',
    '/pix/a\\b',
    '/pix/..;/x',
    '/pix/..;jsessionid=1/x',
    '/pix/a%00b',
    '/pix/%zz',
    '/pix/%',
    '/pix/%C0%AE%C0%AE/x',
    'http://api.vendor.example/../x',
    'http://api.vendor.example/%2e%2e/x',
  ])('%s is refused with BAD_REQUEST', (target) => {
    expect(codeOf(() => get(target, 'api.vendor.example'))).toBe('BAD_REQUEST');
  });

  it('/pix//evil.example/x stays on the route origin under /v2', () => {
    const m = get('/pix//evil.example/x');
    expect(m.route.name).toBe('pix');
    expect(m.path).toBe('/v2/evil.example/x');
    expect(upstreamUrl(m).href).toBe('https://api.vendor.example/v2/evil.example/x');
  });

  it('//evil.example/x never names a host: no route here, and the root route maps it under its own base', () => {
    expect(codeOf(() => get('//evil.example/x'))).toBe('ROUTE_NOT_FOUND');
    const m = matchRequest(rootTable, 'GET', '//evil.example/x', undefined);
    expect(m.path).toBe('/v2/evil.example/x');
    expect(upstreamUrl(m).origin).toBe('https://root.vendor.example');
  });

  it('a double-encoded dot-segment is passed on still encoded, under the base path', () => {
    const m = get('/pix/%252e%252e/x');
    expect(m.path).toBe('/v2/%252e%252e/x');
    expect(upstreamUrl(m).pathname).toBe('/v2/%252e%252e/x');
  });

  it('no target ever leaves the route origin or its base path', () => {
    const targets = [
      '/pix/../../x', '/pix/%2e%2e/%2e%2e/x', '/pix//evil.example/x', '/pix///evil.example', '/pix/%252e%252e/x',
      '/pix/a/../../b', '/pix/@evil.example/x', '/pix/:evil/x', '/pix/http:%2f%2fevil.example/x', '/pix/\\\\evil.example/x',
      '/pix/x?y=/../../z', '//evil.example/pix/x', 'http://evil.example/pix/x', 'http://api.vendor.example//evil.example/x',
      'http://api.vendor.example/special//evil.example',
    ];
    let matched = 0;
    for (const target of targets) {
      for (const t of [table, rootTable]) {
        let m: Match;
        try {
          m = matchRequest(t, 'GET', target, 'api.vendor.example');
        } catch (err) {
          expect(err).toBeInstanceOf(SidecarError);
          expect(['BAD_REQUEST', 'ROUTE_NOT_FOUND']).toContain((err as SidecarError).code);
          continue;
        }
        matched++;
        const route: Route = m.route;
        const url = upstreamUrl(m);
        expect(url.origin, target).toBe(route.upstreamOrigin);
        expect(m.path.startsWith('//'), target).toBe(false);
        const base = route.upstreamBasePath === '/' ? '/' : `${route.upstreamBasePath}`;
        expect(url.pathname === base || url.pathname.startsWith(base === '/' ? '/' : `${base}/`), target).toBe(true);
        expect(url.pathname.split('/')).not.toContain('..');
      }
    }
    expect(matched).toBeGreaterThan(5);
  });
});
