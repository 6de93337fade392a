/** The memcached store against real memcached processes: several servers (consistent hashing), dead, frozen and restarted servers. */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MemcachedStoreConfig } from '../../src/config/types.js';
import { makeToken, type Token } from '../../src/core/token.js';
import { createLogger } from '../../src/log.js';
import { MemcachedStore } from '../../src/store/memcached.js';
import type { StoreEvent } from '../../src/store/store.js';
import { startMemcached, type MemcachedServer } from '../helpers/memcached.js';
import { ok } from '../helpers/stored.js';
import { waitUntil } from '../helpers/wait.js';

const lines: string[] = [];
const log = createLogger({
  level: 'debug',
  destination: new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) }),
});

const KEY = 'a'.repeat(32);
const stores: MemcachedStore[] = [];
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function config(servers: MemcachedServer[], over: Partial<MemcachedStoreConfig> = {}): MemcachedStoreConfig {
  return {
    type: 'memcached',
    servers: servers.map((s) => ({ host: s.host, port: s.port })),
    keyPrefix: `t${randomBytes(3).toString('hex')}:`,
    commandTimeoutMs: 100,
    coordinationTimeoutMs: 1_000,
    lockLeaseMs: 5_000,
    lockWaitTimeoutMs: 15_000,
    pollIntervalMs: 50,
    encryptionKeys: [],
    ...over,
  };
}

async function open(cfg: MemcachedStoreConfig, ready = true): Promise<MemcachedStore> {
  const store = await MemcachedStore.connect(cfg, log);
  stores.push(store);
  if (ready) await waitUntil(() => store.health() === 'ok', 5_000, 10, 'store ready');
  return store;
}

function token(value: string, issuedAtMs = Date.now(), lifetimeMs = 60_000): Token {
  return makeToken({ value, tokenType: 'Bearer', issuedAtMs, expiresAtMs: issuedAtMs + lifetimeMs, scope: undefined, lifetimeSource: 'expires_in' });
}

let mc: MemcachedServer;
beforeAll(async () => {
  mc = await startMemcached();
});
afterAll(async () => {
  await mc.stop();
});
afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
});

describe('several servers', () => {
  let second: MemcachedServer;
  beforeAll(async () => {
    second = await startMemcached();
  });
  afterAll(async () => {
    await second.stop();
  });

  it('credentials spread over the servers by consistent hashing; all keys of one credential live on exactly one', async () => {
    const cfg = config([mc, second], { commandTimeoutMs: 2_000 });
    const store = await open(cfg);
    const keys = Array.from({ length: 200 }, (_, i) => `${i}`.padStart(32, 'c'));
    for (const answer of await Promise.all(keys.map((k) => store.put(k, token(`v-${k}`))))) ok(answer);
    for (const k of keys.slice(0, 20)) ok(await store.putFailure(k, { kind: 'unavailable', message: 'x', untilMs: Date.now() + 10_000 }));
    const on = async (s: MemcachedServer) => new Set((await s.keys()).map((k) => k.key).filter((k) => k.startsWith(cfg.keyPrefix)));
    const [onFirst, onSecond] = [await on(mc), await on(second)];
    const tokensOnFirst = keys.filter((k) => onFirst.has(`${cfg.keyPrefix}{${k}}:token`)).length;
    expect(tokensOnFirst).toBeGreaterThan(60);
    expect(tokensOnFirst).toBeLessThan(140);
    for (const k of keys) {
      const tokenKey = `${cfg.keyPrefix}{${k}}:token`;
      expect(onFirst.has(tokenKey) !== onSecond.has(tokenKey), k).toBe(true);
      expect(store.serverOf(k)).toBe(onFirst.has(tokenKey) ? mc.address : second.address);
    }
    for (const k of keys.slice(0, 20)) {
      const home = onFirst.has(`${cfg.keyPrefix}{${k}}:token`) ? onFirst : onSecond;
      expect(home.has(`${cfg.keyPrefix}{${k}}:failure`), k).toBe(true);
    }
    // The order of the list does not matter: another pod listing them the other way round finds every token.
    const reversed = await open({ ...cfg, servers: [...cfg.servers].reverse() });
    expect((await Promise.all(keys.map((k) => reversed.get(k).then(ok)))).every((t, i) => t?.value.reveal() === `v-${keys[i]}`)).toBe(true);
    console.log(`memcached ring: ${tokensOnFirst} of 200 credentials on the first server, ${200 - tokensOnFirst} on the second`);
  });

  it('a dead server fails its own keys at once and leaves the other server serving', async () => {
    const third = await startMemcached();
    try {
      const store = await open(config([mc, third], { commandTimeoutMs: 1_000 }));
      const keys = Array.from({ length: 40 }, (_, i) => `${i}`.padStart(32, 'd'));
      const onThird = keys.filter((k) => store.serverOf(k) === third.address);
      const onMc = keys.filter((k) => store.serverOf(k) === mc.address);
      expect(onThird.length).toBeGreaterThan(0);
      expect(onMc.length).toBeGreaterThan(0);
      await third.kill();
      await waitUntil(() => store.health() === 'degraded', 2_000, 10, 'the loss noticed');
      const t0 = performance.now();
      const answers = await Promise.all(onThird.map((k) => store.readOrLock(k)));
      const ms = performance.now() - t0;
      expect(answers.every((a) => !a.ok && a.outage.reason === 'down')).toBe(true);
      expect(ms).toBeLessThan(200); // at once, not after the 1 s deadline
      for (const k of onMc) ok(await store.put(k, token(`v-${k}`)));
      expect(ok(await store.get(onMc[0] ?? ''))).toBeDefined();
    } finally {
      await third.stop();
    }
  });
});

describe('failure behaviour', () => {
  it('dead: a call fails at once; frozen: within the command deadline, then the breaker skips it; thawed: answers again', async () => {
    const own = await startMemcached();
    try {
      const store = await open(config([own], { commandTimeoutMs: 50 }));
      own.freeze();
      let t0 = performance.now();
      expect(await store.get(KEY)).toMatchObject({ ok: false, outage: { op: 'get', reason: 'timeout' } });
      const frozenMs = performance.now() - t0;
      expect(frozenMs).toBeGreaterThanOrEqual(45);
      expect(frozenMs).toBeLessThan(50 + 100);
      t0 = performance.now();
      expect(await store.readOrLock(KEY)).toMatchObject({ ok: false, outage: { reason: 'down' } });
      expect(performance.now() - t0).toBeLessThan(10);
      expect(store.health()).toBe('degraded');
      own.thaw();
      await waitUntil(async () => (await store.get(KEY)).ok, 5_000, 20, 'answers after the thaw');
      await own.kill();
      await waitUntil(() => store.health() === 'degraded', 2_000, 10, 'disconnect noticed');
      t0 = performance.now();
      const dead = await Promise.all([store.get(KEY), store.put(KEY, token('x')), store.tryLock(KEY), store.invalidate(KEY, 'fp'), store.getGrantState(KEY)]);
      const deadMs = performance.now() - t0;
      expect(dead.map((d) => d.ok)).toEqual([false, false, false, false, false]);
      expect(dead.map((d) => (d.ok ? '' : d.outage.reason))).toEqual(['down', 'down', 'down', 'down', 'down']);
      expect(deadMs).toBeLessThan(25); // at once: the deadline is 50 ms
      expect(await store.waitForEvent(KEY, 2_000)).toBeUndefined(); // woken by the failed poll, not the timeout
      console.log(`memcached store call: frozen server fails after ${frozenMs.toFixed(1)} ms (deadline 50 ms); dead server after ${deadMs.toFixed(2)} ms for 5 calls`);
    } finally {
      await own.stop();
    }
  });

  it('a lock request given up on as late is dropped once the frozen server carries it out', async () => {
    const own = await startMemcached();
    try {
      const cfg = config([own], { commandTimeoutMs: 1_000 });
      const store = await open(cfg);
      own.freeze();
      expect(await store.readOrLock(KEY, { timeoutMs: 80 })).toMatchObject({ ok: false, outage: { reason: 'timeout' } });
      expect(await store.tryLock('b'.repeat(32), { timeoutMs: 80 })).toMatchObject({ ok: false, outage: { reason: 'timeout' } });
      own.thaw();
      await waitUntil(async () => (await store.get(KEY)).ok, 3_000, 20, 'answers after the thaw');
      await sleep(100);
      expect(await own.get(`${cfg.keyPrefix}{${KEY}}:lock`)).toBeUndefined();
      expect(await own.get(`${cfg.keyPrefix}{${'b'.repeat(32)}}:lock`)).toBeUndefined();
    } finally {
      own.thaw();
      await own.stop();
    }
  });

  it('a server that was down at start and one restarted empty: the store connects, says reconnected, and works', async () => {
    const own = await startMemcached();
    await own.kill();
    const store = await open(config([own]), false);
    const events: StoreEvent[] = [];
    store.onEvent((e) => events.push(e));
    expect(await store.whenReady(300)).toBe(false);
    expect(store.health()).toBe('degraded');
    expect((await store.get(KEY)).ok).toBe(false);
    let server = await own.restart();
    try {
      expect(await store.whenReady(5_000)).toBe(true);
      expect(events).toEqual([]); // the first connection is no reconnect
      await store.put(KEY, token('before-restart'));
      server = await server.restart();
      await waitUntil(() => events.some((e) => e.kind === 'reconnected'), 8_000, 20, 'reconnected event');
      expect(ok(await store.get(KEY))).toBeUndefined(); // memcached keeps nothing across a restart
      await store.put(KEY, token('after-restart'));
      expect(ok(await store.get(KEY))?.value.reveal()).toBe('after-restart');
      const warned = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['event'] === 'store.connect_failed' && l['server'] === server.address);
      expect(warned.length).toBeGreaterThanOrEqual(1);
      expect(warned.length).toBeLessThanOrEqual(2); // once per cause, not once per retry
    } finally {
      await server.stop();
    }
  });
});
