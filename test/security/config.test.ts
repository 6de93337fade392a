/**
 * The config loader and watcher against hostile or mistaken files: devices, FIFOs, directories, huge (sparse) files,
 * YAML alias bombs, credentials in URLs, listeners that expose the app port. Real files and the shipped CLI
 * (`dist/token-sidecar.mjs`, built by `npm run build`) as a child process; no mocks.
 */
import { execFile, spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { mkdir, mkdtemp, open, rename, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigFile, loadConfigText, type LoadResult } from '../../src/config/load.js';
import { ConfigWatcher } from '../../src/config/watch.js';
import { waitUntil } from '../helpers/wait.js';

const CLI = resolve(import.meta.dirname, '../../dist/token-sidecar.mjs');
const URL_PASSWORD = 'Hunter2-Cli-Pass';

let dir: string;
const fifos: string[] = [];
const watchers: ConfigWatcher[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'token-sidecar-config-security-'));
  await writeFile(join(dir, 'client-secret'), 'file-secret-value\n');
});
afterEach(async () => {
  for (const w of watchers.splice(0)) w.stop();
  // A reader left blocked on a FIFO would hold a libuv thread: give it an end of file.
  for (const fifo of fifos.splice(0)) {
    const fh = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK).catch(() => undefined);
    await fh?.close();
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function problems(result: LoadResult): string[] {
  if (result.ok) throw new Error('expected the config to be refused');
  return result.problems;
}

const routesWithSecret = (secret: string) => `version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: https://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://auth.vendor.example/oauth/token
      clientId: pix-client
      clientSecret: ${secret}
`;

async function mkfifo(name: string): Promise<string> {
  const path = join(dir, name);
  await promisify(execFile)('mkfifo', [path]);
  fifos.push(path);
  return path;
}

/** The load, or a failure naming how long it ran: a load blocked on a FIFO must fail the test, not hang it. */
async function within<T>(ms: number, what: string, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)));
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

const GiB = 1024 ** 3;

describe('every file read is bounded: regular files only, up to a size cap', () => {
  it('a fromFile on /dev/zero is refused at once, not read forever', async () => {
    const started = performance.now();
    const found = problems(await within(2_000, 'the load', loadConfigText(routesWithSecret('{ fromFile: /dev/zero }'), { env: {}, baseDir: dir })));
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(found).toEqual(['routes[0].auth.clientSecret: /dev/zero is not a regular file (a character device)']);
  });

  it('a fromFile on a FIFO is refused without blocking on it', async () => {
    await mkfifo('fifo-secret');
    const found = problems(await within(2_000, 'the load', loadConfigText(routesWithSecret('{ fromFile: fifo-secret }'), { env: {}, baseDir: dir })));
    expect(found).toEqual(['routes[0].auth.clientSecret: fifo-secret is not a regular file (a FIFO)']);
  });

  it('a fromFile on a directory is refused as one', async () => {
    await mkdir(join(dir, 'a-directory'), { recursive: true });
    const found = problems(await loadConfigText(routesWithSecret('{ fromFile: a-directory }'), { env: {}, baseDir: dir }));
    expect(found).toEqual(['routes[0].auth.clientSecret: a-directory is not a regular file (a directory)']);
  });

  it.each([
    ['a sparse 2 GiB file', 'sparse-2g', 2 * GiB],
    ['a 1.5 GiB file (readable whole by Node)', 'sparse-1g5', 1.5 * GiB],
    ['a file just over 1 MiB', 'over-1m', 1024 * 1024 + 1],
  ])('a fromFile on %s is refused by its size, without reading it', async (_what, name, bytes) => {
    const file = join(dir, name);
    await writeFile(file, '');
    await truncate(file, bytes);
    const started = performance.now();
    const found = problems(await within(5_000, 'the load', loadConfigText(routesWithSecret(`{ fromFile: ${name} }`), { env: {}, baseDir: dir })));
    expect(performance.now() - started).toBeLessThan(500);
    expect(found).toEqual([`routes[0].auth.clientSecret: ${name} is ${bytes} bytes, over the 1 MiB limit of a secret or certificate file`]);
  });

  it('a fromFile through symlinks (a Kubernetes ..data swap) is followed to its regular file', async () => {
    const data = join(dir, '..2026_01_01');
    await mkdir(data, { recursive: true });
    await writeFile(join(data, 'secret'), 'linked-secret\n');
    await symlink('..2026_01_01', join(dir, '..data'));
    await symlink('..data/secret', join(dir, 'linked-secret'));
    const result = await loadConfigText(routesWithSecret('{ fromFile: linked-secret }'), { env: {}, baseDir: dir });
    if (!result.ok) throw new Error(result.problems.join('\n'));
    const auth = result.config.routes[0]?.auth;
    expect(auth?.type === 'oauth2' && auth.clientSecret?.reveal()).toBe('linked-secret');
  });

  it('routes.yaml itself: a FIFO, /dev/zero, a directory or a file over 1 MiB is one problem with its path', async () => {
    const fifo = await mkfifo('fifo-routes.yaml');
    const big = join(dir, 'big-routes.yaml');
    await writeFile(big, routesWithSecret('s'));
    await truncate(big, 1024 * 1024 + 1);
    await mkdir(join(dir, 'routes-dir.yaml'), { recursive: true });
    expect(problems(await within(2_000, 'the FIFO load', loadConfigFile(fifo, {})))).toEqual([`${fifo}: not a regular file (a FIFO)`]);
    expect(problems(await within(2_000, 'the /dev/zero load', loadConfigFile('/dev/zero', {})))).toEqual(['/dev/zero: not a regular file (a character device)']);
    expect(problems(await loadConfigFile(join(dir, 'routes-dir.yaml'), {}))).toEqual([`${join(dir, 'routes-dir.yaml')}: not a regular file (a directory)`]);
    expect(problems(await loadConfigFile(big, {}))).toEqual([`${big}: ${1024 * 1024 + 1} bytes, over the 1 MiB limit of the config file`]);
  });

  it('the watcher: a secret that becomes a 1.5 GiB file is reported once and never read, poll after poll', async () => {
    const wdir = await mkdtemp(join(dir, 'watch-'));
    const routesFile = join(wdir, 'routes.yaml');
    const secretFile = join(wdir, 'client-secret');
    await writeFile(routesFile, routesWithSecret('{ fromFile: client-secret }'));
    await writeFile(secretFile, 'secret-one\n');
    const initial = await loadConfigFile(routesFile, {});
    if (!initial.ok) throw new Error(initial.problems.join('\n'));
    const results: LoadResult[] = [];
    const watcher = new ConfigWatcher(routesFile, initial.files, (r) => results.push(r), 25, { initial, env: {} });
    watchers.push(watcher);
    await watcher.start();

    const huge = join(wdir, 'huge.tmp');
    await writeFile(huge, '');
    await truncate(huge, 1.5 * GiB);
    await rename(huge, secretFile);
    const report = await waitUntil(() => results[0], 3_000, 10, 'the report of the huge secret');
    const tooBig = `routes[0].auth.clientSecret: client-secret is ${1.5 * GiB} bytes, over the 1 MiB limit of a secret or certificate file`;
    // The file on disk, and the last good config re-read with the changed secret: both refuse it.
    expect(problems(report)).toEqual([tooBig, `the last good config with the changed secret file(s): ${tooBig}`]);
    // A poll of the huge file is a stat, not a 1.5 GiB read, and it changes nothing: no reload loop.
    for (let i = 0; i < 5; i++) {
      const started = performance.now();
      await watcher.check();
      expect(performance.now() - started).toBeLessThan(100);
    }
    expect(results).toHaveLength(1);
  });
});

/** A classic billion-laughs: 10 levels of 9 aliases each expand to 9^10 nodes. */
function billionLaughs(): string {
  const lines = ['    l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
  for (let i = 1; i <= 9; i++) lines.push(`    l${i}: &l${i} [${Array(9).fill(`*l${i - 1}`).join(', ')}]`);
  return `${routesWithSecret('s')}    x-bomb:\n${lines.join('\n')}\n`;
}

/** `count` routes sharing one `&timeouts` anchor, as a platform team writes it. */
function aliasHeavy(count: number): string {
  const routes = Array.from({ length: count }, (_, i) => `  - name: r${i}
    match: { pathPrefix: /r${i} }
    upstream: https://api.vendor.example/v2
    auth: { type: static, value: { fromEnv: CLI_SECURITY_KEY } }
    timeouts: ${i === 0 ? '&timeouts { connect: 2s, response: 20s }' : '*timeouts'}
`);
  return `version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:\n${routes.join('')}`;
}

async function configFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

/** The shipped CLI; a run that outlives `timeoutMs` is killed and shows as code null. */
function cli(args: string[], opts: { nodeArgs?: string[]; timeoutMs?: number; until?: (stdout: string) => boolean } = {}) {
  const env: NodeJS.ProcessEnv = { ...process.env, LOG_FORMAT: 'json', LOG_LEVEL: 'info', CLI_SECURITY_KEY: 'k' };
  delete env['TOKEN_SIDECAR_CONFIG'];
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 10_000);
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    if (opts.until?.(stdout)) child.kill('SIGTERM');
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((done, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

describe('parsing never throws past the problem list (validate and start exit 1, never 2)', () => {
  it('a billion-laughs bomb: validate and start exit 1 quickly, in a 64 MiB heap', async () => {
    const file = await configFile('bomb.yaml', billionLaughs());
    for (const command of ['validate', 'start']) {
      const started = performance.now();
      const { code, stderr } = await cli([command, '--config', file], { nodeArgs: ['--max-old-space-size=64'] });
      expect(performance.now() - started, command).toBeLessThan(5_000);
      expect({ command, code }).toEqual({ command, code: 1 });
      expect(stderr).toMatch(/bomb\.yaml: YAML aliases expand to more than \d+ nodes/);
    }
  });

  it('a legitimate 120-route file that reuses one anchor validates and starts', async () => {
    const file = await configFile('aliases.yaml', aliasHeavy(120));
    const validated = await cli(['validate', '--config', file]);
    expect(validated.code, validated.stderr).toBe(0);
    expect(validated.stdout).toContain('ok (120 routes');
    const started = await cli(['start', '--config', file], { until: (out) => out.includes('"event":"listening"') });
    // Stopped by SIGTERM once listening (by signal if it lands before the handlers are installed): never a config exit.
    expect(started.stdout, started.stderr).toContain('"event":"listening"');
    expect([1, 2]).not.toContain(started.code);
  });

  it('an alias cycle, and routes.yaml being a FIFO: exit 1 with the problem', async () => {
    const cycle = await configFile('cycle.yaml', 'version: 1\nroutes: &r\n  - *r\n');
    const c = await cli(['validate', '--config', cycle]);
    expect(c.code).toBe(1);
    expect(c.stderr).toContain('cycle.yaml:3:5: YAML alias *r refers to a node that contains it (a cycle)');
    const fifo = await mkfifo('fifo-cli.yaml');
    const f = await cli(['start', '--config', fifo], { timeoutMs: 5_000 });
    expect(f.code).toBe(1);
    expect(f.stderr).toContain(`${fifo}: not a regular file (a FIFO)`);
  });

  it('a listen host that is not an address is refused by validate, so start exits 1, not 2', async () => {
    const file = await configFile('bad-listen.yaml', routesWithSecret('s').replace('listen: 127.0.0.1:0', 'listen: api.vendor.example:0'));
    const validated = await cli(['validate', '--config', file]);
    expect(validated.code).toBe(1);
    expect(validated.stderr).toMatch(/listen: "api\.vendor\.example:0" is not a listen address/);
    const started = await cli(['start', '--config', file]);
    expect(started.code).toBe(1);
  });
});

describe('reloads', () => {
  it('a reload to an alias-heavy file is applied; a reload to a bomb is a reported problem', async () => {
    const wdir = await mkdtemp(join(dir, 'reload-'));
    const routesFile = join(wdir, 'routes.yaml');
    const env = { CLI_SECURITY_KEY: 'k' };
    await writeFile(routesFile, aliasHeavy(1));
    const initial = await loadConfigFile(routesFile, env);
    if (!initial.ok) throw new Error(initial.problems.join('\n'));
    const results: LoadResult[] = [];
    const watcher = new ConfigWatcher(routesFile, initial.files, (r) => results.push(r), 25, { initial, env });
    watchers.push(watcher);
    await watcher.start();

    await writeFile(`${routesFile}.tmp`, aliasHeavy(120));
    await rename(`${routesFile}.tmp`, routesFile);
    const applied = await waitUntil(() => results[0], 3_000, 10, 'the alias-heavy reload');
    if (!applied.ok) throw new Error(applied.problems.join('\n'));
    expect(applied.config.routes).toHaveLength(120);

    await writeFile(`${routesFile}.tmp`, billionLaughs());
    await rename(`${routesFile}.tmp`, routesFile);
    const refused = await waitUntil(() => results[1], 3_000, 10, 'the bomb reload');
    expect(problems(refused)).toEqual([expect.stringMatching(/routes\.yaml: YAML aliases expand to more than \d+ nodes/)]);
  });
});

describe('what validate prints', () => {
  it('credentials in a URL are refused and never printed', async () => {
    const file = await configFile(
      'url-creds.yaml',
      routesWithSecret('s')
        .replace('https://auth.vendor.example/oauth/token', `https://user:${URL_PASSWORD}@auth.vendor.example/oauth/token`)
        .replace('routes:', `store:\n  type: redis\n  redis: { url: "redis://:${URL_PASSWORD}@redis.platform:6379/0" }\nroutes:`),
    );
    const { code, stdout, stderr } = await cli(['validate', '--config', file]);
    expect(code).toBe(1);
    expect(`${stdout}${stderr}`).not.toContain(URL_PASSWORD);
    expect(stderr).toContain('routes[0].auth.tokenUrl: "https://***@auth.vendor.example/oauth/token" must not carry credentials');
    expect(stderr).toContain('store.redis.url: must not carry credentials (user:password@): set store.redis.username and store.redis.password');
  });

  it('listen on all interfaces: refused without allowExternalListen; with it, start warns', async () => {
    const exposed = routesWithSecret('s').replace('listen: 127.0.0.1:0', 'listen: 0.0.0.0:0');
    const refused = await cli(['validate', '--config', await configFile('exposed.yaml', exposed)]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('listen: 0.0.0.0:0 is not a loopback address');
    const allowed = await configFile('exposed-allowed.yaml', `allowExternalListen: true\n${exposed}`);
    const started = await cli(['start', '--config', allowed], { until: (out) => out.includes('"event":"listening"') });
    const warning = started.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((e) => e['event'] === 'config.warning' && String(e['msg']).startsWith('listen: 0.0.0.0:0 is reachable from outside the pod'));
    expect(warning, started.stdout).toMatchObject({ level: 'warn' });
    expect(started.stdout).toContain('"event":"listening"');
  });
});
