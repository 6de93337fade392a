/** `store.type: memcached` in routes.yaml: the block, its defaults and errors, the docs example, and the store it makes. */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { loadConfigText, type LoadResult } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { createStore } from '../../src/store/index.js';

const ROUTE = `routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: https://api.vendor.example/v2
    auth: { type: oauth2, tokenUrl: https://auth.vendor.example/oauth/token, clientId: c, clientSecret: { fromEnv: SECRET } }
`;
const ENV = { SECRET: 's3cret', TOKEN_CACHE_KEY: randomBytes(32).toString('base64'), PIX_CLIENT_SECRET: 'pix' };

const load = (store: string) => loadConfigText(`version: 1\nstore:\n${store}\n${ROUTE}`, { env: ENV });

function problems(result: LoadResult): string {
  if (result.ok) throw new Error('expected the config to be refused');
  return result.problems.join('\n');
}

describe('store.type: memcached', () => {
  it('servers as host:port, [v6]:port or { host, port }; every other key has its default', async () => {
    const result = await load(`  type: memcached\n  memcached:\n    servers: ["mc-0.mc:11211", "[::1]:11212", { host: 10.0.0.3, port: 11213 }]`);
    if (!result.ok) throw new Error(result.problems.join('\n'));
    expect(result.config.store).toEqual({
      type: 'memcached',
      servers: [
        { host: 'mc-0.mc', port: 11211 },
        { host: '::1', port: 11212 },
        { host: '10.0.0.3', port: 11213 },
      ],
      keyPrefix: 'token-sidecar:',
      commandTimeoutMs: 1_000,
      coordinationTimeoutMs: 1_000,
      lockLeaseMs: 5_000,
      lockWaitTimeoutMs: 15_000,
      pollIntervalMs: 50,
      encryptionKeys: [],
    });
  });

  it('refuses what cannot work, with the key named', async () => {
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: []'))).toMatch(/servers.*at least one server/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc:0"]'))).toMatch(/"mc:0" is not host:port|host:port/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc"]'))).toMatch(/host:port/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc:11211", "MC:11211"]'))).toMatch(/listed twice/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc:11211"]\n    pollInterval: 5s'))).toMatch(/pollInterval.*out of range: use 10ms to 1s/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc:11211"]\n    keyPrefix: "has space"'))).toMatch(/keyPrefix/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc:11211"]\n    url: redis://x'))).toMatch(/url/);
    expect(problems(await load('  type: memcache'))).toMatch(/store.type must be memory, redis or memcached/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc:11211"]\n  encryption:\n    keys:\n      - { id: a, secret: { fromEnv: TOKEN_CACHE_KEY } }\n      - { id: a, secret: { fromEnv: TOKEN_CACHE_KEY } }'))).toMatch(/duplicate key id "a"/);
    expect(problems(await load('  type: memcached\n  memcached:\n    servers: ["mc:11211"]\n  encryption:\n    keys:\n      - { id: a, secret: { fromEnv: SECRET } }'))).toMatch(/32 random bytes/);
  });

  it('the routes.yaml example in docs/stores.md loads, with its encryption key', async () => {
    const doc = readFileSync(new URL('../../docs/stores.md', import.meta.url), 'utf8');
    const yaml = /```yaml\n(version: 1\n[\s\S]*?)```/.exec(doc)?.[1];
    if (!yaml) throw new Error('no example in docs/stores.md');
    const result = await loadConfigText(yaml, { env: ENV });
    if (!result.ok) throw new Error(result.problems.join('\n'));
    expect(result.warnings).toEqual([]);
    expect(result.config.store).toMatchObject({ type: 'memcached', pollIntervalMs: 50, encryptionKeys: [{ id: 'k1' }] });
    expect(result.config.store.type === 'memcached' && result.config.store.servers).toHaveLength(3);
  });

  it('createStore makes the memcached store, which answers (down) without a server and never throws', async () => {
    const log = createLogger({ level: 'error', destination: new Writable({ write: (_c, _e, done) => done() }) });
    const store = await createStore(
      { type: 'memcached', servers: [{ host: '127.0.0.1', port: 1 }], keyPrefix: 't:', commandTimeoutMs: 100, coordinationTimeoutMs: 100, lockLeaseMs: 1_000, lockWaitTimeoutMs: 1_000, pollIntervalMs: 50, encryptionKeys: [] },
      log,
    );
    try {
      expect(store.kind).toBe('memcached');
      expect(store.eventsLive()).toBe(false);
      expect(await store.whenReady(200)).toBe(false);
      expect(store.health()).toBe('degraded');
      expect(await store.readOrLock('a'.repeat(32))).toMatchObject({ ok: false, outage: { reason: 'down' } });
    } finally {
      await store.close();
    }
  });
});
