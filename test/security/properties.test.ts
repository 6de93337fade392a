/**
 * Properties that must hold for every input, checked with fast-check on generated ones (a fixed seed per run is
 * printed on failure, so a counterexample can be replayed): the matcher never lets a target leave its route's origin
 * or base path, and the config loader never throws, never hangs and never repeats a secret in a problem.
 */
import fc from 'fast-check';
import { beforeAll, describe, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfigText } from '../../src/config/load.js';
import { SidecarError } from '../../src/core/errors.js';
import { buildRouteTable, matchRequest, type RouteTable } from '../../src/proxy/match.js';

let tables: RouteTable[];

beforeAll(async () => {
  const route = (name: string, match: string, upstream: string) =>
    `  - name: ${name}\n    match: ${match}\n    upstream: ${upstream}\n    auth: { type: static, value: key-${name} }\n`;
  const load = async (routes: string) => {
    const loaded = await loadConfigText(`version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:\n${routes}`);
    if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
    return buildRouteTable(loaded.config.routes);
  };
  tables = [
    await load(
      route('pix', '{ pathPrefix: /pix }', 'https://api.vendor.example/v2') +
        route('cob', '{ pathPrefix: /pix/cob }', 'https://cob.vendor.example/v3') +
        route('host', '{ host: api.vendor.example }', 'https://api.vendor.example/h'),
    ),
    await load(route('root', '{ pathPrefix: / }', 'https://root.vendor.example/v2')),
  ];
});

/** Path pieces an attacker would combine: dot-segments in every spelling, separators, encodings, odd characters. */
const piece = fc.constantFrom(
  '', '.', '..', '%2e', '%2E%2e', '%252e%252e', '..;', '..;x', '.%2e', '%2f', '%2F', '%5c', '\\', '%00', '%', '%zz', ';',
  '@evil.example', 'evil.example', 'http:', '//', '?', '#', 'pix', 'cob', 'v2', 'a', 'ü', '%C3%BC', '~', ':', '*',
);
const target = fc.oneof(
  fc.array(piece, { maxLength: 8 }).map((ps) => `/${ps.join('/')}`),
  fc.array(piece, { maxLength: 8 }).map((ps) => `/pix/${ps.join('/')}`),
  fc.array(piece, { maxLength: 6 }).map((ps) => `http://api.vendor.example/${ps.join('/')}`),
  fc.string({ maxLength: 40 }).map((s) => `/pix/${s}`),
);

describe('the matcher, for every target', () => {
  it('answers a typed 400/404, or a path that stays on the route origin, under its base, with no dot-segment', () => {
    fc.assert(
      fc.property(target, fc.constantFrom(0, 1), fc.option(fc.constantFrom('api.vendor.example', 'evil.example', 'x')), (t, i, host) => {
        const table = tables[i] as RouteTable;
        let m;
        try {
          m = matchRequest(table, 'GET', t, host ?? undefined);
        } catch (err) {
          return err instanceof SidecarError && (err.code === 'BAD_REQUEST' || err.code === 'ROUTE_NOT_FOUND');
        }
        const url = new URL(m.path, m.route.upstreamOrigin);
        const base = m.route.upstreamBasePath;
        const underBase = base === '/' || url.pathname === base || url.pathname.startsWith(`${base}/`);
        const decoded = url.pathname.split('/').map((s) => {
          try {
            return decodeURIComponent(s);
          } catch {
            return s;
          }
        });
        return url.origin === m.route.upstreamOrigin && underBase && !m.path.startsWith('//') && !decoded.includes('..') && !decoded.includes('.');
      }),
      { numRuns: 3_000 },
    );
  });
});

const CANARY = 'Canary-Secret-7f3a9b';

describe('the config loader, for every document', () => {
  it('resolves (never throws) with a config or a list of problems, for arbitrary values as YAML', async () => {
    await fc.assert(
      fc.asyncProperty(fc.anything({ maxDepth: 4 }), async (value) => {
        const result = await loadConfigText(stringify(value));
        return result.ok || (result.problems.length > 0 && result.problems.every((p) => typeof p === 'string'));
      }),
      { numRuns: 300 },
    );
  });

  it('resolves for arbitrary text, and never repeats a secret in a problem', async () => {
    const routeish = fc.record(
      {
        name: fc.oneof(fc.constant('pix'), fc.string({ maxLength: 8 })),
        match: fc.oneof(fc.constant({ pathPrefix: '/pix' }), fc.anything({ maxDepth: 2 })),
        upstream: fc.oneof(fc.constant('https://api.vendor.example/v2'), fc.constant(`https://u:${CANARY}@api.vendor.example/`), fc.string()),
        auth: fc.record(
          {
            type: fc.constantFrom('oauth2', 'static', 'other'),
            tokenUrl: fc.oneof(fc.constant('https://auth.vendor.example/t'), fc.constant(`https://id:${CANARY}@auth.vendor.example/t`), fc.string()),
            clientId: fc.constantFrom('c', `c\r\n${CANARY}`),
            clientSecret: fc.constantFrom(CANARY, `${CANARY}\nx`, { fromEnv: 'UNSET_VAR' }),
            value: fc.constantFrom(CANARY, `Bearer ${CANARY}\r\n`),
            params: fc.oneof(fc.constant({}), fc.constant({ client_secret: CANARY }), fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 }))),
            timeout: fc.constantFrom('0s', '1000h', '5s', 'x'),
          },
          { requiredKeys: [] },
        ),
        timeouts: fc.oneof(fc.constant(undefined), fc.record({ connect: fc.constantFrom('0s', '1s', '9999h') })),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(routeish, { maxLength: 3 }), fc.string({ maxLength: 30 }), async (routes, noise) => {
        const doc = `${stringify({ version: 1, routes })}${noise.includes('\n') ? '' : `# ${noise}`}`;
        const result = await loadConfigText(doc, { env: {} });
        if (result.ok) return true;
        return result.problems.every((p) => !p.includes(CANARY));
      }),
      { numRuns: 300 },
    );
  });
});
