import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigFile, loadConfigText, type LoadResult } from '../../src/config/load.js';
import type { OAuth2Auth } from '../../src/config/types.js';
import { parseDurationMs, parsePercent, parseSizeBytes } from '../../src/config/units.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'token-sidecar-config-'));
  await writeFile(join(dir, 'client-secret'), 'file-secret-value\n');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function problems(result: LoadResult): string[] {
  if (result.ok) throw new Error('expected the config to be refused');
  return result.problems;
}

async function ok(yaml: string, env: NodeJS.ProcessEnv = {}) {
  const result = await loadConfigText(yaml, { env, baseDir: dir });
  if (!result.ok) throw new Error(result.problems.join('\n'));
  return result;
}

const oauthRoute = (over: { name?: string; prefix?: string; secret?: string; scopes?: string; extra?: string } = {}) => `
  - name: ${over.name ?? 'pix'}
    match: { pathPrefix: ${over.prefix ?? '/pix'} }
    upstream: https://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://auth.vendor.example/oauth/token
      clientId: pix-client
      clientSecret: ${over.secret ?? '{ fromFile: client-secret }'}
      scopes: ${over.scopes ?? '[cob.read, cob.write]'}
${over.extra ?? ''}`;

const header = 'version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:';

describe('a file with many mistakes', () => {
  const broken = `version: 1
listen: 127.0.0.1:0
colour: blue
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: https://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://auth.vendor.example/oauth/token
      clientId: pix-client
      clientSecret: { fromEnv: PIX_SECRET_NOT_SET }
      refreshAhead: 150%
    timeouts: { connect: 30 seconds }
  - name: pix
    match: { pathPrefix: /pix/ }
    upstream: http://api.other.example/v2
    auth:
      type: oauth2
      tokenUrl: not a url
      clientId: other
      clientSecret: { fromFile: does/not/exist }
      scopes: cob.read
    retryOn401: "yes"
    retryOn40l: true
  - name: Bad_Name
    match: { pathPrefix: /bad }
    upstream: https://api.vendor.example/v2?x=1
    auth: { type: static, value: k }
    replayBodyLimit: lots
`;

  it('reports every problem at once, each with its path', async () => {
    const found = problems(await loadConfigText(broken, { env: {}, baseDir: dir }));
    const expected: Array<[string, RegExp]> = [
      ['(root)', /Unrecognized key: "colour"/],
      ['routes[0].auth.refreshAhead', /"150%" is not a percentage/],
      ['routes[0].timeouts.connect', /"30 seconds" is not a duration/],
      ['routes[0].auth.clientSecret', /environment variable PIX_SECRET_NOT_SET is not set/],
      ['routes[1].name', /duplicate route name "pix" \(routes\[0\]\)/],
      ['routes[1].match', /same match as routes\[0\]/],
      ['routes[1].upstream', /plain http to api.other.example/],
      ['routes[1].auth.tokenUrl', /"not a url" is not a valid URL/],
      ['routes[1].auth.clientSecret', /cannot read does\/not\/exist \(ENOENT\)/],
      ['routes[1].auth.scopes', /expected array/],
      ['routes[1].retryOn401', /expected boolean/],
      ['routes[1]', /Unrecognized key: "retryOn40l"/],
      ['routes[2].name', /lowercase letters/],
      ['routes[2].upstream', /must not have a \?query/],
      ['routes[2].replayBodyLimit', /"lots" is not a size/],
    ];
    for (const [path, message] of expected) {
      const hit = found.find((p) => p.startsWith(`${path}: `) && message.test(p));
      expect(hit, `${path}: ${String(message)}\nin:\n${found.join('\n')}`).toBeDefined();
    }
    expect(found).toHaveLength(expected.length);
  });

  it('reports the file-level problems (secrets, plain http) when the schema is satisfied', async () => {
    const yaml = `${header}
  - name: pix
    match: { pathPrefix: /pix }
    upstream: http://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: http://auth.vendor.example/oauth/token
      clientId: { fromEnv: PIX_ID_NOT_SET }
      clientSecret: { fromFile: missing-secret }
`;
    expect(problems(await loadConfigText(yaml, { env: {}, baseDir: dir })).sort()).toEqual(
      [
        'routes[0].upstream: plain http to api.vendor.example would send credentials in clear; use https or set allowInsecureHttp: true',
        'routes[0].auth.tokenUrl: plain http to auth.vendor.example would send credentials in clear; use https or set allowInsecureHttp: true',
        'routes[0].auth.clientId: environment variable PIX_ID_NOT_SET is not set',
        'routes[0].auth.clientSecret: cannot read missing-secret (ENOENT)',
      ].sort(),
    );
  });

  it('YAML syntax errors and duplicate keys carry a position', async () => {
    const dup = problems(await loadConfigText('version: 1\nversion: 1\nroutes: []\n', { fileName: 'r.yaml' }));
    expect(dup[0]).toMatch(/^r\.yaml:2:\d+: /);
    const syntax = problems(await loadConfigText('version: 1\nroutes: [\n', { fileName: 'r.yaml' }));
    expect(syntax[0]).toMatch(/^r\.yaml:\d+:\d+: /);
  });

  it('an empty or scalar document is one clear problem, not a crash', async () => {
    expect(problems(await loadConfigText(''))).toEqual(['(root): Invalid input: expected object, received null']);
    expect(problems(await loadConfigText('42'))).toEqual(['(root): Invalid input: expected object, received number']);
    expect(problems(await loadConfigText('version: 1\nroutes: []\n'))).toEqual(['routes: at least one route']);
    expect(problems(await loadConfigText('version: 2\nroutes: 5\n'))).toEqual(['version: version must be 1', 'routes: Invalid input: expected array, received number']);
  });
});

describe('individual rules', () => {
  it('duplicate prefixes are found across spellings, and per host', async () => {
    const dup = problems(await loadConfigText(`${header}${oauthRoute()}${oauthRoute({ name: 'pix-2', prefix: '/pix/' })}`, { env: {}, baseDir: dir }));
    expect(dup).toEqual(['routes[1].match: same match as routes[0]']);
    // Same prefix under a host is another match.
    await ok(`${header}${oauthRoute()}
  - name: by-host
    match: { host: api.vendor.example, pathPrefix: /pix }
    upstream: https://api.vendor.example/v2
    auth: { type: static, value: k }
`);
  });

  it('plain http is accepted to loopback, and elsewhere only with allowInsecureHttp', async () => {
    for (const host of ['127.0.0.1:8080', 'localhost:8080', '[::1]:8080', '127.0.0.2']) {
      await ok(`${header}
  - name: local
    match: { pathPrefix: /local }
    upstream: http://${host}/v1
    auth: { type: static, value: k }
`);
    }
    const insecure = await ok(`${header}
  - name: lan
    match: { pathPrefix: /lan }
    upstream: http://vendor.internal/v1
    allowInsecureHttp: true
    auth: { type: static, value: k }
`);
    expect(insecure.config.routes[0]?.allowInsecureHttp).toBe(true);
    expect(problems(await loadConfigText(`${header}
  - name: lan
    match: { pathPrefix: /lan }
    upstream: http://localhost.evil.example/v1
    auth: { type: static, value: k }
`))).toEqual([
      'routes[0].upstream: plain http to localhost.evil.example would send credentials in clear; use https or set allowInsecureHttp: true',
    ]);
  });

  it('bad URLs: scheme, credentials, fragment', async () => {
    const found = problems(await loadConfigText(`${header}
  - name: a
    match: { pathPrefix: /a }
    upstream: ftp://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://user:pw@auth.vendor.example/token#frag
      clientId: c
      clientSecret: s
`));
    // The credentials are refused without being shown.
    expect(found).toEqual([
      'routes[0].upstream: "ftp://api.vendor.example/v2" must be http:// or https://',
      'routes[0].auth.tokenUrl: "https://***@auth.vendor.example/token#frag" must not carry credentials (use the auth block)',
      'routes[0].auth.tokenUrl: "https://***@auth.vendor.example/token#frag" must not have a #fragment',
    ]);
  });

  it('durations, percentages and sizes', async () => {
    expect(parseDurationMs('500ms')).toBe(500);
    expect(parseDurationMs('30s')).toBe(30_000);
    expect(parseDurationMs('1.5m')).toBe(90_000);
    expect(parseDurationMs('2h')).toBe(7_200_000);
    for (const bad of ['30 seconds', '30', '30S', '-1s', 's', '']) expect(parseDurationMs(bad), bad).toBeUndefined();
    expect(parsePercent('20%')).toBe(0.2);
    expect(parsePercent('12.5%')).toBe(0.125);
    for (const bad of ['0%', '100%', '150%', '20', '-5%', '%']) expect(parsePercent(bad), bad).toBeUndefined();
    expect(parseSizeBytes('64KiB')).toBe(65_536);
    expect(parseSizeBytes('1MiB')).toBe(1_048_576);
    expect(parseSizeBytes(512)).toBe(512);
    expect(parseSizeBytes(-1)).toBeUndefined();

    const loaded = await ok(`${header}${oauthRoute({ extra: '    timeouts: { connect: 250ms, response: 1.5m }\n    replayBodyLimit: 64KiB' }).replace(
      '      scopes:',
      '      refreshAhead: 12.5%\n      timeout: 2s\n      scopes:',
    )}`);
    const route = loaded.config.routes[0];
    expect(route?.timeouts).toEqual({ connectMs: 250, responseMs: 90_000, idleMs: 60_000 });
    expect(route?.replayBodyLimitBytes).toBe(65_536);
    expect(route?.auth).toMatchObject({ refreshAheadRatio: 0.125, timeoutMs: 2_000 });

    const bad = problems(await loadConfigText(`${header}${oauthRoute().replace('      scopes:', '      refreshAhead: 20\n      timeout: 10 s\n      scopes:')}`, { env: {}, baseDir: dir }));
    expect(bad.sort()).toEqual([
      'routes[0].auth.refreshAhead: expected a percentage between 0% and 100% (exclusive), such as 20%',
      'routes[0].auth.timeout: "10 s" is not a duration such as 500ms, 30s, 5m or 1h',
    ]);
  });

  it('defaults fill what the file leaves out', async () => {
    const loaded = await ok(`version: 1\nroutes:${oauthRoute()}`);
    const { config } = loaded;
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 15080 });
    expect(config.store).toEqual({ type: 'memory' });
    const route = config.routes[0];
    expect(route).toMatchObject({
      upstreamOrigin: 'https://api.vendor.example',
      upstreamBasePath: '/v2',
      inject: { header: 'authorization', format: 'Bearer {token}' },
      retryOn401: true,
      replayBodyLimitBytes: 1_048_576,
      timeouts: { connectMs: 5_000, responseMs: 30_000, idleMs: 60_000 },
    });
    expect(route?.auth).toMatchObject({ clientAuth: 'client_secret_basic', refreshAheadRatio: 0.2, defaultExpiresInMs: 300_000, maxLifetimeMs: 86_400_000 });
    // fromFile is read relative to the config's directory, without its trailing newline.
    expect((route?.auth as OAuth2Auth).clientSecret?.reveal()).toBe('file-secret-value');
  });
});

describe('the shipped routes.yaml', () => {
  it('validates', async () => {
    const result = await loadConfigFile('routes.yaml', {});
    if (!result.ok) throw new Error(result.problems.join('\n'));
    expect(result.config.routes.map((r) => r.name)).toEqual(['pix', 'local']);
    expect(result.config.routes[0]?.upstreamOrigin).toBe('https://api.vendor.example');
  });
});

describe('credential identity', () => {
  async function identityOf(over: Parameters<typeof oauthRoute>[0], env: NodeJS.ProcessEnv = {}) {
    const loaded = await ok(`${header}${oauthRoute(over)}`, env);
    return (loaded.config.routes[0]?.auth as OAuth2Auth).identity;
  }

  it('changes when the secret or the scopes change, not with scope order or the route name', async () => {
    const base = await identityOf({ secret: 'secret-one' });
    expect(base).toMatch(/^[0-9a-f]{32}$/);
    expect(await identityOf({ secret: 'secret-one' })).toBe(base);
    expect(await identityOf({ secret: 'secret-one', name: 'renamed' })).toBe(base);
    expect(await identityOf({ secret: 'secret-one', scopes: '[cob.write, cob.read]' })).toBe(base);
    expect(await identityOf({ secret: 'secret-two' })).not.toBe(base);
    expect(await identityOf({ secret: 'secret-one', scopes: '[cob.read]' })).not.toBe(base);
    expect(await identityOf({ secret: '{ fromEnv: PIX_SECRET }' }, { PIX_SECRET: 'secret-one' })).toBe(base);
  });

  it('hides the secret: not in the identity, not in JSON or inspect of the config', async () => {
    const secret = 'hidden-Secret-98765';
    const loaded = await ok(`${header}${oauthRoute({ secret })}`);
    const auth = loaded.config.routes[0]?.auth as OAuth2Auth;
    expect(auth.identity).not.toContain(secret);
    expect(JSON.stringify(loaded.config)).not.toContain(secret);
    expect(inspect(loaded.config, { depth: 10 })).not.toContain(secret);
    expect(`${String(auth.clientSecret)}`).toBe('[redacted]');
    expect(auth.clientSecret?.reveal()).toBe(secret);
    // A literal secret in the file is allowed, with a warning.
    expect(loaded.warnings).toEqual(['routes[0].auth.clientSecret: a literal value in the config file; prefer fromEnv or fromFile']);
  });
});

describe('durations have a safe range', () => {
  const redisStore = (over: string) => `store:\n  type: redis\n  redis: { url: "redis://127.0.0.1:6379", ${over} }\n`;
  const withRoute = (routeExtra: string, authExtra = '', top = '') =>
    `version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\n${top}routes:${oauthRoute({ extra: routeExtra }).replace('      scopes:', `${authExtra}      scopes:`)}`;

  it.each([
    ['routes[0].timeouts.connect', withRoute('    timeouts: { connect: 0s }'), '"0s" is out of range: use 100ms to 10m'],
    ['routes[0].timeouts.response', withRoute('    timeouts: { response: 0ms }'), '"0ms" is out of range: use 100ms to 10m'],
    ['routes[0].timeouts.idle', withRoute('    timeouts: { idle: 11m }'), '"11m" is out of range: use 100ms to 10m'],
    ['routes[0].auth.timeout', withRoute('', '      timeout: 0s\n'), '"0s" is out of range: use 100ms to 2m'],
    ['routes[0].auth.defaultExpiresIn', withRoute('', '      defaultExpiresIn: 0s\n'), '"0s" is out of range: use 10s to 24h'],
    ['routes[0].auth.maxLifetime', withRoute('', '      maxLifetime: 0s\n'), '"0s" is out of range: use 10s to 168h'],
    ['routes[0].auth.maxLifetime', withRoute('', '      maxLifetime: 1000h\n'), '"1000h" is out of range: use 10s to 168h'],
    ['drainTimeout', withRoute('', '', 'drainTimeout: 1000h\n'), '"1000h" is out of range: use 0ms to 10m'],
    ['store.redis.commandTimeout', withRoute('', '', redisStore('commandTimeout: 0ms')), '"0ms" is out of range: use 10ms to 1m'],
    ['store.redis.coordinationTimeout', withRoute('', '', redisStore('coordinationTimeout: 2m')), '"2m" is out of range: use 10ms to 1m'],
    ['store.redis.lockLease', withRoute('', '', redisStore('lockLease: 100ms')), '"100ms" is out of range: use 500ms to 5m'],
    ['store.redis.lockWaitTimeout', withRoute('', '', redisStore('lockWaitTimeout: 1000h')), '"1000h" is out of range: use 100ms to 10m'],
  ])('%s refuses a value that would disable it or overflow a timer', async (path, yaml, message) => {
    expect(problems(await loadConfigText(yaml, { env: {}, baseDir: dir }))).toEqual([`${path}: ${message}`]);
  });

  it('accepts the bounds themselves, and drainTimeout 0s (no drain)', async () => {
    const loaded = await ok(
      withRoute('    timeouts: { connect: 100ms, response: 10m, idle: 10m }', '      timeout: 2m\n      defaultExpiresIn: 10s\n      maxLifetime: 168h\n', 'drainTimeout: 0s\n'),
    );
    expect(loaded.config.drainTimeoutMs).toBe(0);
    expect(loaded.config.routes[0]?.timeouts).toEqual({ connectMs: 100, responseMs: 600_000, idleMs: 600_000 });
    expect(loaded.config.routes[0]?.auth).toMatchObject({ timeoutMs: 120_000, defaultExpiresInMs: 10_000, maxLifetimeMs: 604_800_000 });
  });
});

describe('credentials in URLs are refused without being echoed', () => {
  const PASSWORD = 'Hunter2-Url-Pass';

  it('a tokenUrl, upstream or resource with user:password@ names the URL with ***@', async () => {
    const found = problems(await loadConfigText(`${header}
  - name: a
    match: { pathPrefix: /a }
    upstream: https://app:${PASSWORD}@api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://user:${PASSWORD}@auth.vendor.example/token#frag
      clientId: c
      clientSecret: s
      resource: https://${PASSWORD}@api.vendor.example
`));
    expect(found.join('\n')).not.toContain(PASSWORD);
    expect(found).toEqual([
      'routes[0].upstream: "https://***@api.vendor.example/v2" must not carry credentials (use the auth block)',
      'routes[0].auth.tokenUrl: "https://***@auth.vendor.example/token#frag" must not carry credentials (use the auth block)',
      'routes[0].auth.tokenUrl: "https://***@auth.vendor.example/token#frag" must not have a #fragment',
      // A URL that parses is shown as parsed (so with its root path).
      'routes[0].auth.resource: "https://***@api.vendor.example/" must not carry credentials (use the auth block)',
    ]);
  });

  it('a URL that does not parse is not echoed with its userinfo either', async () => {
    const found = problems(await loadConfigText(`${header}
  - name: a
    match: { pathPrefix: /a }
    upstream: https://user:${PASSWORD}@
    auth: { type: static, value: k }
`));
    expect(found).toEqual(['routes[0].upstream: "https://***@" is not a valid URL']);
  });

  it('plain http with credentials in the URL: neither problem shows them', async () => {
    const found = problems(await loadConfigText(`${header}
  - name: a
    match: { pathPrefix: /a }
    upstream: http://user:${PASSWORD}@api.vendor.example/v2
    auth: { type: static, value: k }
`));
    expect(found.join('\n')).not.toContain(PASSWORD);
    expect(found).toContain('routes[0].upstream: plain http to api.vendor.example would send credentials in clear; use https or set allowInsecureHttp: true');
  });

  it.each([`redis://:${PASSWORD}@redis.platform:6379/0`, `rediss://app:${PASSWORD}@redis.platform:6379`, `redis://${PASSWORD}@redis.platform`])(
    'store.redis.url %s is refused, pointing at username/password',
    async (url) => {
      const found = problems(await loadConfigText(`version: 1\nstore:\n  type: redis\n  redis: { url: "${url}" }\nroutes:${oauthRoute()}`, { env: {}, baseDir: dir }));
      expect(found).toEqual([
        'store.redis.url: must not carry credentials (user:password@): set store.redis.username and store.redis.password (a secret, e.g. { fromEnv: REDIS_PASSWORD })',
      ]);
    },
  );

  it('store.redis.url that does not parse is refused without being echoed', async () => {
    const found = problems(await loadConfigText(`version: 1\nstore:\n  type: redis\n  redis: { url: "redis://:${PASSWORD}@[x" }\nroutes:${oauthRoute()}`, { env: {}, baseDir: dir }));
    expect(found).toEqual(['store.redis.url: "redis://***@[x" is not a valid URL']);
  });
});

describe('YAML aliases', () => {
  /** 120 routes that share one `&timeouts` anchor: 119 aliases of a 3-key mapping. */
  const aliasHeavy = (n: number) => {
    const routes = Array.from({ length: n }, (_, i) => `
  - name: r${i}
    match: { pathPrefix: /r${i} }
    upstream: https://api.vendor.example/v2
    auth: { type: static, value: { fromEnv: KEY } }
    timeouts: ${i === 0 ? '&timeouts { connect: 2s, response: 20s, idle: 30s }' : '*timeouts'}`);
    return `version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:${routes.join('')}\n`;
  };

  it('a legitimate file that reuses one anchor 119 times loads', async () => {
    const loaded = await ok(aliasHeavy(120), { KEY: 'k' });
    expect(loaded.config.routes).toHaveLength(120);
    expect(loaded.config.routes[119]?.timeouts).toEqual({ connectMs: 2_000, responseMs: 20_000, idleMs: 30_000 });
  });

  it('a billion-laughs bomb is one problem, found quickly', async () => {
    const levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
    for (let i = 1; i < 10; i++) {
      const prev = String.fromCharCode(96 + i);
      levels.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${prev}`).join(',')}]`);
    }
    const bomb = `version: 1\nroutes:${oauthRoute({ extra: '' })}\n`.replace('      scopes:', `      params:\n${levels.map((l) => `        ${l}`).join('\n')}\n      scopes:`);
    const started = performance.now();
    const found = problems(await loadConfigText(bomb, { env: {}, baseDir: dir, fileName: 'bomb.yaml' }));
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(found).toEqual([expect.stringMatching(/^bomb\.yaml: YAML aliases expand to more than \d+ nodes \(\d+ in the file\); refused as a resource exhaustion attack$/)]);
  });

  it('an alias that refers to its own ancestor (a cycle) is a problem, not a hang or a crash', async () => {
    const found = problems(await loadConfigText('version: 1\nroutes: &r\n  - *r\n', { fileName: 'cycle.yaml' }));
    expect(found).toEqual(['cycle.yaml:3:5: YAML alias *r refers to a node that contains it (a cycle)']);
  });

  it('1500 routes sharing anchors load, quickly', async () => {
    const started = performance.now();
    const loaded = await ok(aliasHeavy(1500), { KEY: 'k' });
    expect(performance.now() - started).toBeLessThan(3_000);
    expect(loaded.config.routes).toHaveLength(1500);
  });

  it('a document too big to hold is refused before it is built, and one just over the node cap after', async () => {
    const dense = `version: 1\nroutes:\n${'- { a: 1 }\n'.repeat(60_000)}`;
    expect(problems(await loadConfigText(dense, { fileName: 'r.yaml' }))).toEqual(['r.yaml: more than 100000 YAML tokens; a config may have at most 50000 nodes']);
    const wide = `version: 1\nx: [${Array(55_000).fill('1').join(',')}]\nroutes: []\n`;
    expect(problems(await loadConfigText(wide, { fileName: 'r.yaml' }))).toEqual(['r.yaml: 55007 YAML nodes, more than the 50000 a config may have']);
  });

  it('merge keys work where YAML 1.1 has them, and a __proto__ key stays a key', async () => {
    const merged = await ok(
      `%YAML 1.1
---
version: 1
routes:
  - &first
    name: k
    match: { pathPrefix: /k }
    upstream: https://api.vendor.example/v2
    auth: { type: static, value: { fromEnv: KEY } }
    retryOn401: false
  - <<: *first
    name: k2
    match: { pathPrefix: /k2 }
    warm: true
`,
      { KEY: 'k' },
    );
    expect(merged.config.routes[1]).toMatchObject({ name: 'k2', retryOn401: false, warm: true, upstreamOrigin: 'https://api.vendor.example' });
    const polluted = problems(await loadConfigText('version: 1\n__proto__: { polluted: true }\nroutes: []\n'));
    expect(polluted).toContain('(root): Unrecognized key: "__proto__"');
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('an alias with no anchor before it is a problem with its position', async () => {
    const found = problems(await loadConfigText('version: 1\nroutes: *nowhere\n', { fileName: 'r.yaml' }));
    expect(found).toEqual([expect.stringMatching(/^r\.yaml:2:\d+: .*nowhere/)]);
  });
});

describe('values that go into headers carry no line breaks or control characters', () => {
  const staticRoute = (value: string, extra = '') => `${header}
  - name: k
    match: { pathPrefix: /k }
    upstream: https://api.vendor.example/v2
    auth: { type: static, value: ${value} }
${extra}`;

  it('inject.format with CR LF is refused at load', async () => {
    const found = problems(await loadConfigText(staticRoute('k', '    inject: { header: X-Api-Key, format: "{token}\\r\\nX-Evil: 1" }'), { env: {} }));
    expect(found).toEqual(['routes[0].inject.format: must not contain CR, LF, NUL or other control characters (U+000D at index 7)']);
  });

  it.each([
    ['a literal with CR LF', '"key\\r\\nX-Evil: 1"', {}],
    ['a literal with NUL', '"key\\u0000"', {}],
    ['an env var with a line break', '{ fromEnv: API_KEY }', { API_KEY: 'key\nmore' }],
    ['an env var with a character a header cannot carry', '{ fromEnv: API_KEY }', { API_KEY: 'key\u20ac' }],
  ])('a static auth.value from %s is refused without being shown', async (_what, value, env: NodeJS.ProcessEnv) => {
    const found = problems(await loadConfigText(staticRoute(value), { env }));
    expect(found).toEqual([
      expect.stringMatching(/^routes\[0\]\.auth\.value: (environment variable API_KEY )?contains (a line break \(CR or LF\)|a control character|a character outside Latin-1); a header value cannot carry it$/),
    ]);
    expect(found.join('\n')).not.toContain('key');
  });

  it('a secret file: one trailing \\n or \\r\\n is dropped; a blank line at the end or CR LF inside is refused', async () => {
    await writeFile(join(dir, 'crlf-end'), 'crlf-secret\r\n');
    await writeFile(join(dir, 'blank-line-end'), 'blank-secret\n\n');
    await writeFile(join(dir, 'crlf-inside'), 'inside\r\nsecret');
    const loaded = await ok(`${header}${oauthRoute({ secret: '{ fromFile: crlf-end }' })}`);
    expect((loaded.config.routes[0]?.auth as OAuth2Auth).clientSecret?.reveal()).toBe('crlf-secret');
    for (const file of ['blank-line-end', 'crlf-inside']) {
      const found = problems(await loadConfigText(`${header}${oauthRoute({ secret: `{ fromFile: ${file} }` })}`, { env: {}, baseDir: dir }));
      expect(found).toEqual([`routes[0].auth.clientSecret: ${file} contains a line break (CR or LF) after its one trailing newline; a client credential cannot carry it`]);
    }
  });

  it('client ids and client secrets with control characters are refused (client_secret_basic and _post)', async () => {
    const route = (clientAuth: string) =>
      `${header}${oauthRoute({ secret: '{ fromEnv: SECRET }' }).replace('clientId: pix-client', `clientId: { fromEnv: CLIENT_ID }\n      clientAuth: ${clientAuth}`)}`;
    for (const clientAuth of ['client_secret_basic', 'client_secret_post']) {
      const found = problems(await loadConfigText(route(clientAuth), { env: { CLIENT_ID: 'id\r\n', SECRET: 'sec\u0000ret' } }));
      expect(found.sort()).toEqual([
        'routes[0].auth.clientId: environment variable CLIENT_ID contains a line break (CR or LF); a client credential cannot carry it',
        'routes[0].auth.clientSecret: environment variable SECRET contains a control character; a client credential cannot carry it',
      ]);
    }
  });

  it('is checked also when the schema refused another part of the file', async () => {
    const found = problems(await loadConfigText(`${staticRoute('{ fromEnv: API_KEY }')}    retryOn401: "yes"\n`, { env: { API_KEY: 'a\nb' } }));
    expect(found.sort()).toEqual([
      'routes[0].auth.value: environment variable API_KEY contains a line break (CR or LF); a header value cannot carry it',
      'routes[0].retryOn401: Invalid input: expected boolean, received string',
    ]);
  });
});

describe('auth.params', () => {
  it('cannot set the form fields the sidecar sets itself, and says what to use instead', async () => {
    const params = '{ grant_type: password, client_id: x, client_secret: y, scope: s, audience: a, resource: r, client_assertion: j, client_assertion_type: t, refresh_token: rt, Scope: S, tenant: ok }';
    const found = problems(await loadConfigText(`${header}${oauthRoute().replace('      scopes:', `      params: ${params}\n      scopes:`)}`, { env: {}, baseDir: dir }));
    expect(found).toEqual([
      'routes[0].auth.params.grant_type: reserved; the sidecar sets it from auth.grant',
      'routes[0].auth.params.client_id: reserved; the sidecar sets it from auth.clientId',
      'routes[0].auth.params.client_secret: reserved; the sidecar sets it from auth.clientSecret (sent as auth.clientAuth says)',
      'routes[0].auth.params.scope: reserved; the sidecar sets it from auth.scopes',
      'routes[0].auth.params.audience: reserved; the sidecar sets it from auth.audience',
      'routes[0].auth.params.resource: reserved; the sidecar sets it from auth.resource',
      'routes[0].auth.params.client_assertion: reserved; the sidecar sets it from auth.privateKey (clientAuth: private_key_jwt)',
      'routes[0].auth.params.client_assertion_type: reserved; the sidecar sets it from auth.clientAuth',
      'routes[0].auth.params.refresh_token: reserved; the sidecar sets it from auth.refreshToken (grant: refresh_token)',
      'routes[0].auth.params.Scope: reserved; the sidecar sets it from auth.scopes',
    ]);
  });

  it('other parameters pass', async () => {
    const loaded = await ok(`${header}${oauthRoute().replace('      scopes:', '      params: { tenant: acme, grant: x }\n      scopes:')}`);
    expect((loaded.config.routes[0]?.auth as OAuth2Auth).params).toEqual({ tenant: 'acme', grant: 'x' });
  });
});

describe('listen and admin addresses', () => {
  const route = `\nroutes:${oauthRoute({ secret: 's' })}`;
  const load = (top: string) => loadConfigText(`version: 1\n${top}${route}`, { env: {}, baseDir: dir });

  it.each(['listen: api.vendor.example:15080', 'admin: my-pod:15081', 'listen: "[::g]:15080"', 'admin: 999.1.1.1:15081'])(
    '%s is refused: an IP literal or localhost only',
    async (line) => {
      const key = line.split(':')[0] ?? '';
      expect(problems(await load(`${line}\n`))).toEqual([
        expect.stringMatching(new RegExp(`^${key}: ".+" is not a listen address: use an IP address \\(127\\.0\\.0\\.1, \\[::1\\], 0\\.0\\.0\\.0\\) or localhost with a port$`)),
      ]);
    },
  );

  it.each(['listen: 0.0.0.0:15080', 'listen: ":15080"', 'listen: "[::]:15080"', 'listen: 10.1.2.3:15080'])(
    '%s (reachable from outside the pod, no authentication) is refused without allowExternalListen',
    async (line) => {
      expect(problems(await load(`${line}\n`))).toEqual([
        expect.stringMatching(/^listen: .+ is not a loopback address: the app port has no authentication, so anyone who reaches it can use the routes' credentials; listen on 127\.0\.0\.1 or set allowExternalListen: true$/),
      ]);
    },
  );

  it('allowExternalListen: true accepts it, with a warning', async () => {
    const result = await load('listen: 0.0.0.0:15080\nallowExternalListen: true\n');
    if (!result.ok) throw new Error(result.problems.join('\n'));
    expect(result.config.listen).toEqual({ host: '0.0.0.0', port: 15080 });
    expect(result.config.allowExternalListen).toBe(true);
    expect(result.warnings).toContain('listen: 0.0.0.0:15080 is reachable from outside the pod and has no authentication (allowExternalListen: true)');
  });

  it('loopback and localhost need nothing; admin on all interfaces stays the default', async () => {
    for (const top of ['listen: 127.0.0.1:0\n', 'listen: "[::1]:0"\n', 'listen: localhost:0\n', 'listen: 127.0.0.2:0\n', 'listen: "[::ffff:127.0.0.1]:0"\n', '']) {
      const result = await load(`${top}admin: 0.0.0.0:15081\n`);
      if (!result.ok) throw new Error(`${top}: ${result.problems.join('\n')}`);
      expect(result.warnings.filter((w) => w.startsWith('listen'))).toEqual([]);
    }
    const defaults = await load('');
    if (!defaults.ok) throw new Error(defaults.problems.join('\n'));
    expect(defaults.config.admin).toEqual({ host: '0.0.0.0', port: 15081 });
    expect(defaults.config.allowExternalListen).toBe(false);
  });
});

describe('replayBodyLimit', () => {
  it('is capped at 64 MiB: each request in flight may hold that much memory', async () => {
    const head = 'version: 1\nroutes:';
    expect((await ok(`${head}${oauthRoute({ extra: '    replayBodyLimit: 64MiB' })}`)).config.routes[0]?.replayBodyLimitBytes).toBe(64 * 1024 * 1024);
    expect(problems(await loadConfigText(`${head}${oauthRoute({ extra: '    replayBodyLimit: 65MiB' })}`, { env: {}, baseDir: dir }))).toEqual([
      expect.stringMatching(/^routes\[0\]\.replayBodyLimit: must be at most 64MiB/),
    ]);
  });
});
