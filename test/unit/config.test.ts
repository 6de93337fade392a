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
    expect(found).toEqual([
      'routes[0].upstream: "ftp://api.vendor.example/v2" must be http:// or https://',
      'routes[0].auth.tokenUrl: "https://user:pw@auth.vendor.example/token#frag" must not carry credentials (use the auth block)',
      'routes[0].auth.tokenUrl: "https://user:pw@auth.vendor.example/token#frag" must not have a #fragment',
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
    expect((route?.auth as OAuth2Auth).clientSecret.reveal()).toBe('file-secret-value');
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
    expect(auth.clientSecret.reveal()).toBe(secret);
    // A literal secret in the file is allowed, with a warning.
    expect(loaded.warnings).toEqual(['routes[0].auth.clientSecret: a literal value in the config file; prefer fromEnv or fromFile']);
  });
});
