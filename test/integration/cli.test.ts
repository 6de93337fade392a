/**
 * The shipped CLI (`dist/token-sidecar.mjs`, the bundle `pretest` builds) as a child process, the way users and
 * Kubernetes run it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startEchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { fingerprintOf } from '../../src/core/token.js';
import { loadConfigText } from '../../src/config/load.js';
import { startRedis } from '../helpers/redis.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(ROOT, 'dist', 'token-sidecar.mjs');
const SECRET = 'Cli-Test-Secret-4242';

const children = new Set<ChildProcess>();
const cleanups: Array<() => Promise<unknown>> = [];
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'token-sidecar-cli-'));
});
afterEach(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  children.clear();
  await Promise.allSettled(cleanups.splice(0).map((c) => c()));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const childEnv = (logLevel: string | undefined): NodeJS.ProcessEnv => {
  // CLI_TEST_SECRET is the client secret the test configs name with fromEnv.
  const env: NodeJS.ProcessEnv = { ...process.env, LOG_FORMAT: 'json', CLI_TEST_SECRET: SECRET };
  delete env['TOKEN_SIDECAR_CONFIG'];
  delete env['CLI_TEST_UNSET_VAR'];
  delete env['LOG_LEVEL'];
  if (logLevel !== undefined) env['LOG_LEVEL'] = logLevel;
  return env;
};

function launch(args: string[], logLevel?: string): { child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }>; stdout: () => string } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: childEnv(logLevel), stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { child, done, stdout: () => stdout };
}

async function run(args: string[], timeoutMs = 15_000) {
  const { child, done } = launch(args);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    return await done;
  } finally {
    clearTimeout(timer);
  }
}

async function idpWith(opts: Parameters<typeof startFakeIdp>[0] = {}): Promise<FakeIdp> {
  const idp = await startFakeIdp({ clients: { 'cli-client': SECRET }, ...opts });
  cleanups.push(() => idp.close());
  return idp;
}

async function configFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

const oauthConfig = (idp: FakeIdp, upstream: string) => `version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
drainTimeout: 1s
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: ${upstream}
    auth:
      type: oauth2
      tokenUrl: ${idp.url}
      clientId: cli-client
      clientSecret: { fromEnv: CLI_TEST_SECRET }
      scopes: [cob.read]
`;

describe('token-sidecar CLI', () => {
  it('--help exits 0 and lists the commands', async () => {
    const { code, stdout } = await run(['--help']);
    expect(code).toBe(0);
    expect(stdout).toContain('Usage: token-sidecar <command>');
    for (const command of ['start', 'validate', 'token ROUTE', 'demo']) expect(stdout).toContain(command);
  });

  it('validate accepts the shipped routes.yaml', async () => {
    const { code, stdout } = await run(['validate', '--config', 'routes.yaml']);
    expect(code).toBe(0);
    expect(stdout.trim()).toBe('routes.yaml: ok (2 routes: pix, local; store: memory)');
  });

  it('validate on a broken file exits 1 and prints every problem with its path on stderr', async () => {
    const file = await configFile(
      'broken.yaml',
      `version: 1
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: https://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://auth.vendor.example/token
      clientId: c
      clientSecret: { fromEnv: CLI_TEST_UNSET_VAR }
    timeouts: { connect: 30 seconds }
  - name: pix
    match: { pathPrefix: /other }
    upstream: https://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: not-a-url
      clientId: c
      clientSecret: { fromFile: missing-secret-file }
    colour: blue
`,
    );
    const { code, stdout, stderr } = await run(['validate', '--config', file]);
    expect(code).toBe(1);
    expect(stdout).toBe('');
    const lines = stderr.trim().split('\n');
    expect(lines[0]).toBe(`${file}: 6 problems`);
    for (const expected of [
      'routes[0].timeouts.connect: "30 seconds" is not a duration',
      'routes[0].auth.clientSecret: environment variable CLI_TEST_UNSET_VAR is not set',
      'routes[1].auth.tokenUrl: "not-a-url" is not a valid URL',
      'routes[1]: Unrecognized key: "colour"',
      'routes[1].name: duplicate route name "pix" (routes[0])',
      'routes[1].auth.clientSecret: cannot read missing-secret-file (ENOENT)',
    ]) {
      expect(lines.some((l) => l.trimStart().startsWith(expected)), `${expected}\nin:\n${stderr}`).toBe(true);
    }
  });

  it('demo exits 0 and shows 2 token endpoint calls', async () => {
    const { code, stdout } = await run(['demo']);
    expect(code).toBe(0);
    expect(stdout).toMatch(/^token endpoint calls: 2 for \d+ vendor requests/m);
    expect(stdout).toContain('→ replayed');
  });

  it('a SIGTERM the moment start says listening still drains and exits 0', async () => {
    const idp = await idpWith();
    const file = await configFile('term-early.yaml', oauthConfig(idp, 'http://127.0.0.1:9/v2'));
    const { child, done } = launch(['start', '--config', file], 'info');
    // Sent from the 'data' handler that sees the line: as early as any orchestrator could.
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('"event":"listening"')) child.kill('SIGTERM');
    });
    const { code, stdout: out } = await done;
    expect(code).toBe(0);
    expect(out).toContain('"event":"stopped"');
  });

  it('start logs a listening JSON line, proxies with an injected token, and exits 0 on SIGTERM', async () => {
    const idp = await idpWith();
    const vendor = await startEchoVendor();
    cleanups.push(() => vendor.close());
    const file = await configFile('start.yaml', oauthConfig(idp, `${vendor.url}/v2`));
    const { child, done, stdout } = launch(['start', '--config', file], 'info');
    const deadline = Date.now() + 10_000;
    let listening: Record<string, unknown> | undefined;
    while (!listening && Date.now() < deadline && child.exitCode === null) {
      listening = stdout()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((e) => e['event'] === 'listening');
      if (!listening) await new Promise((r) => setTimeout(r, 50));
    }
    expect(listening, stdout()).toMatchObject({ level: 'info', store: 'memory', routes: 1 });
    const proxy = String(listening?.['proxy']);
    const admin = String(listening?.['admin']);
    expect(proxy).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

    expect((await fetch(`${admin}/healthz`)).status).toBe(200);
    const res = await fetch(`${proxy}/pix/cob/1`);
    expect(res.status).toBe(200);
    expect(vendor.requests[0]?.authorization).toBe(`Bearer ${idp.issued[0]}`);

    child.kill('SIGTERM');
    const { code, stdout: out } = await done;
    expect(code).toBe(0);
    expect(out).toContain('"event":"stopped"');
    expect(out).not.toContain(idp.issued[0]);
    expect(out).not.toContain(SECRET);
  });

  it('token ROUTE prints JSON metadata with the fingerprint, never the token', async () => {
    const idp = await idpWith();
    const file = await configFile('token.yaml', oauthConfig(idp, 'http://127.0.0.1:9/v2'));
    // Default log level: stdout is the metadata alone (logs at info would share stdout with it).
    const { code, stdout, stderr } = await run(['token', 'pix', '--config', file]);
    expect(code, stderr).toBe(0);
    expect(idp.calls).toBe(1);
    const token = idp.issued[0] ?? '';
    const meta = JSON.parse(stdout) as Record<string, unknown>;
    expect(meta).toMatchObject({
      route: 'pix',
      source: 'fetched',
      fingerprint: fingerprintOf(token),
      lifetimeSource: 'expires_in',
      scope: 'cob.read',
      tokenType: 'Bearer',
      grant: 'client_credentials',
      clientAuth: 'client_secret_basic',
      clientAssertion: null,
      certificateThumbprint: null,
      dpop: null,
    });
    expect(meta['expiresInS']).toBeGreaterThan(3_500);
    expect(`${stdout}${stderr}`).not.toContain(token);
    expect(`${stdout}${stderr}`).not.toContain(SECRET);
  });

  it('token ROUTE honours store.redis.lockWaitTimeout: another pod holding the lock costs 300 ms, not the 15 s default', async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const idp = await idpWith();
    const text = oauthConfig(idp, 'http://127.0.0.1:9/v2').replace(
      'routes:\n',
      `store:\n  type: redis\n  redis: { url: "${redis.url}", lockWaitTimeout: 300ms }\nroutes:\n`,
    );
    const file = await configFile('token-lock.yaml', text);
    // The route's lock key as the sidecar names it (default keyPrefix), from the same config and environment.
    const loaded = await loadConfigText(text, { env: childEnv(undefined) });
    if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
    const auth = loaded.config.routes[0]?.auth;
    if (auth?.type !== 'oauth2') throw new Error('expected an oauth2 route');
    expect(loaded.config.store).toMatchObject({ type: 'redis', lockWaitTimeoutMs: 300 });
    const lockKey = `token-sidecar:{${auth.identity}}:lock`;
    // Another pod is refreshing this token (and never finishes in time).
    expect(await redis.command('SET', lockKey, 'someone-else', 'PX', 20_000)).toBe('OK');

    const started = Date.now();
    const { code, stdout, stderr } = await run(['token', 'pix', '--config', file], 10_000);
    const elapsedMs = Date.now() - started;
    expect(elapsedMs, `token ROUTE took ${elapsedMs} ms (exit ${String(code)})\n${stderr}`).toBeLessThan(5_000);
    expect(code, stderr).toBe(0);
    // It waited out the configured 300 ms for the other pod (so the lock was seen), then fetched the token itself.
    const events = stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events.some((e) => e['event'] === 'lock.wait_timeout' && e['route'] === 'pix'), stderr).toBe(true);
    expect(idp.calls).toBe(1);
    expect(JSON.parse(stdout)).toMatchObject({ route: 'pix', source: 'fetched', fingerprint: fingerprintOf(idp.issued[0] ?? '') });
    // The other pod's lock was left alone.
    expect(await redis.command('GET', lockKey)).toBe('someone-else');
  });

  it('token ROUTE fails clearly: unknown route → 1, refused credentials → 2', async () => {
    const idp = await idpWith({ clients: { 'cli-client': 'not-the-secret' } });
    const file = await configFile('token-bad.yaml', oauthConfig(idp, 'http://127.0.0.1:9/v2'));
    const unknown = await run(['token', 'nope', '--config', file]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain('no route named "nope" (routes: pix)');
    const refused = await run(['token', 'pix', '--config', file]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('token for pix failed: TOKEN_REJECTED');
    expect(refused.stderr).not.toContain(SECRET);
  });
});
