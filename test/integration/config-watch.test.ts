/**
 * Hot reload against real files: atomic renames as Kubernetes does them, and, where a test must act between a load
 * and what follows it, the real loader handed in wrapped (no timing race).
 */
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfigFile, loadConfigSource, type LoadResult } from '../../src/config/load.js';
import { ConfigWatcher, type ConfigWatcherOptions } from '../../src/config/watch.js';
import { waitUntil } from '../helpers/wait.js';

const POLL_MS = 25;
const WAIT_MS = 3_000;

let dir: string;
let routesFile: string;
let secretFile: string;
const watchers: ConfigWatcher[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'token-sidecar-watch-'));
  routesFile = join(dir, 'routes.yaml');
  secretFile = join(dir, 'client-secret');
});

afterEach(async () => {
  for (const w of watchers.splice(0)) w.stop();
  await rm(dir, { recursive: true, force: true });
});

const routesYaml = (prefix = '/pix') => `version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: pix
    match: { pathPrefix: ${prefix} }
    upstream: https://api.vendor.example/v2
    auth:
      type: oauth2
      tokenUrl: https://auth.vendor.example/oauth/token
      clientId: pix-client
      clientSecret: { fromFile: client-secret }
`;

/** Write-then-rename, so a poll never reads half a file (Kubernetes swaps whole directories the same way). */
async function replace(file: string, content: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, content);
  await rename(tmp, file);
}

function okResult(result: LoadResult | undefined): Extract<LoadResult, { ok: true }> {
  if (!result) throw new Error('no result');
  if (!result.ok) throw new Error(`expected an ok result, got: ${result.problems.join('; ')}`);
  return result;
}

function failedResult(result: LoadResult | undefined): Extract<LoadResult, { ok: false }> {
  if (!result) throw new Error('no result');
  if (result.ok) throw new Error('expected a failed result');
  return result;
}

function secretOf(result: LoadResult | undefined): string {
  const auth = okResult(result).config.routes[0]?.auth;
  if (auth?.type !== 'oauth2') throw new Error('expected an oauth2 route');
  return auth.clientSecret?.reveal() ?? '';
}

async function startWatcher(onResult: (result: LoadResult) => void, options?: ConfigWatcherOptions): Promise<ConfigWatcher> {
  // As src/cli/main.ts does: load first, then watch what that load read.
  const initial = options?.initial ?? (await loadConfigFile(routesFile));
  okResult(initial);
  const watcher = new ConfigWatcher(routesFile, initial.files, onResult, POLL_MS, options);
  watchers.push(watcher);
  await watcher.start();
  return watcher;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));


describe('ConfigWatcher', () => {
  it.each([
    {
      file: 'client-secret',
      content: (v: string) => `secret-${v}\n`,
      loaded: (r: LoadResult) => secretOf(r).slice('secret-'.length),
    },
    {
      file: 'routes.yaml',
      content: (v: string) => routesYaml(`/${v}`),
      loaded: (r: LoadResult) => (okResult(r).config.routes[0]?.match.pathPrefix ?? '').slice(1),
    },
  ])('loads a change to $file that lands after the load read it (what is seen is what the load read)', async ({ file, content, loaded }) => {
    await writeFile(routesFile, routesYaml());
    await writeFile(secretFile, 'secret-v0\n');
    const path = join(dir, file);
    await writeFile(path, content('v0'));
    const results: LoadResult[] = [];
    // The loader is the real one; right after the load that reads v1 returns, the file becomes v2: the change lands
    // after the load read the file and before the watcher takes in what it read.
    let landV2 = false;
    const load = async (f: string, env?: NodeJS.ProcessEnv) => {
      const loadedSource = await loadConfigSource(f, env);
      if (landV2) {
        landV2 = false;
        await replace(path, content('v2'));
      }
      return loadedSource;
    };
    await startWatcher((r) => results.push(r), { load });
    landV2 = true;
    await replace(path, content('v1'));

    // On a timeout the assertion below shows what was loaded instead.
    await waitUntil(() => results.some((r) => r.ok && loaded(r) === 'v2'), WAIT_MS, 10).catch(() => undefined);
    expect(results.map(loaded)).toEqual(['v1', 'v2']);
  });

  it.each([
    ['a YAML syntax error', 'version: 1\nroutes: [\n', /routes\.yaml:\d+:\d+: /],
    ['a schema error', 'version: 1\nroutes: 5\n', /^routes: /],
  ])('while routes.yaml has %s, a rotated secret of the last good config is still loaded', async (_what, broken, problem) => {
    await writeFile(routesFile, routesYaml());
    await writeFile(secretFile, 'secret-one\n');
    const results: LoadResult[] = [];
    await startWatcher((r) => results.push(r));

    await replace(routesFile, broken);
    const failure = failedResult(await waitUntil(() => results[0], WAIT_MS, 10, 'the failed reload'));
    expect(failure.problems).toEqual([expect.stringMatching(problem)]);
    // Nothing changes any more: no reload loop.
    await sleep(POLL_MS * 6);
    expect(results).toHaveLength(1);

    await replace(secretFile, 'secret-two\n');
    const rotated = okResult(await waitUntil(() => results[1], WAIT_MS, 10, 'the reload with the rotated secret'));
    expect(secretOf(rotated)).toBe('secret-two');
    expect(rotated.warnings).toEqual([expect.stringMatching(/routes\.yaml: still does not load \(1 problem: .+\); re-read the last good config with the changed secret file\(s\) .*client-secret/)]);
    expect(rotated.warnings.join('\n')).not.toMatch(/secret-(one|two)/);
    await sleep(POLL_MS * 6);
    expect(results).toHaveLength(2);

    // Fixing the file brings its own content back, without the warning.
    await replace(routesFile, routesYaml('/pix2'));
    const fixed = okResult(await waitUntil(() => results[2], WAIT_MS, 10, 'the fixed config'));
    expect(fixed.config.routes[0]?.match.pathPrefix).toBe('/pix2');
    expect(secretOf(fixed)).toBe('secret-two');
    expect(fixed.warnings).toEqual([]);
  });

  it('survives a reload callback that throws: reports it without secrets and keeps polling', async () => {
    await writeFile(routesFile, routesYaml());
    await writeFile(secretFile, 'secret-one\n');
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const results: LoadResult[] = [];
      await startWatcher((r) => {
        results.push(r);
        if (results.length === 1) throw new Error(`could not apply the config with ${secretOf(r)}`);
      });

      await replace(secretFile, 'secret-two\n');
      await waitUntil(() => results.length >= 2, WAIT_MS, 10, 'the report of the throw');
      expect(secretOf(results[0])).toBe('secret-two');
      const report = failedResult(results[1]);
      expect(report.problems).toEqual([expect.stringContaining('could not apply the config with [redacted]')]);
      expect(report.problems.join('\n')).not.toContain('secret-two');

      await replace(secretFile, 'secret-three\n');
      await waitUntil(() => results.length >= 3, WAIT_MS, 10, 'the next change');
      expect(secretOf(results[2])).toBe('secret-three');
      await sleep(POLL_MS * 2);
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('a check never rejects, even when every callback throws', async () => {
    await writeFile(routesFile, routesYaml());
    await writeFile(secretFile, 'secret-one\n');
    let calls = 0;
    const watcher = await startWatcher(() => {
      calls++;
      throw new Error('always');
    });
    await expect(watcher.check(true)).resolves.toBeUndefined();
    // The result, then the report of its throw (which throws too, and is dropped).
    expect(calls).toBe(2);
  });

  it('delivers a change made between the caller’s load and start() when given that load', async () => {
    await writeFile(routesFile, routesYaml());
    await writeFile(secretFile, 'secret-one\n');
    const initial = await loadConfigFile(routesFile);
    await replace(secretFile, 'secret-two\n');
    const results: LoadResult[] = [];
    await startWatcher((r) => results.push(r), { initial });
    expect(secretOf(await waitUntil(() => results[0], WAIT_MS, 10, 'the change made before start()'))).toBe('secret-two');
  });
});
