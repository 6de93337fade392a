/** The Redis store against real redis-server processes: keys, TTLs, encryption, scripts, locks and failure behaviour. */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { Redis } from 'ioredis';
import { Secret } from '../../src/core/secret.js';
import type { OAuth2Auth, RedisStoreConfig } from '../../src/config/types.js';
import { createLogger } from '../../src/log.js';
import { RedisStore } from '../../src/store/redis.js';
import type { StoreEvent } from '../../src/store/store.js';
import { ok } from '../helpers/stored.js';
import { TokenManager } from '../../src/tokens/manager.js';
import { makeToken, type Token } from '../../src/core/token.js';
import { makeCerts } from '../helpers/certs.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { waitUntil } from '../helpers/wait.js';

const lines: string[] = [];
const log = createLogger({
  level: 'debug',
  destination: new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) }),
});

const KEY = 'a'.repeat(32);
const stores: RedisStore[] = [];

function config(redis: RedisServer, over: Partial<RedisStoreConfig> = {}): RedisStoreConfig {
  return {
    type: 'redis',
    url: redis.url,
    sentinels: undefined,
    name: undefined,
    sentinelPassword: undefined,
    cluster: undefined,
    username: undefined,
    password: undefined,
    tls: undefined,
    keyPrefix: `t${randomBytes(3).toString('hex')}:`,
    commandTimeoutMs: 100,
    coordinationTimeoutMs: 1_000,
    lockLeaseMs: 5_000,
    lockWaitTimeoutMs: 15_000,
    encryptionKeys: [],
    ...over,
  };
}

async function open(cfg: RedisStoreConfig): Promise<RedisStore> {
  const store = await RedisStore.connect(cfg, log);
  stores.push(store);
  await waitUntil(() => store.health() === 'ok', 5_000, 10, 'store ready');
  return store;
}

function token(value: string, issuedAtMs = Date.now(), lifetimeMs = 60_000): Token {
  return makeToken({ value, tokenType: 'Bearer', issuedAtMs, expiresAtMs: issuedAtMs + lifetimeMs, scope: undefined, lifetimeSource: 'expires_in' });
}

const key32 = () => randomBytes(32);

let redis: RedisServer;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});
afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
});

describe('keys and values', () => {
  it('keys are prefix + {hash}: token and lock share a slot, reveal nothing, and always carry a TTL', async () => {
    const cfg = config(redis);
    const store = await open(cfg);
    await store.put(KEY, token('tok-1'));
    const lock = ok(await store.tryLock(KEY));
    expect(lock).toBeDefined();
    const keys = ((await redis.command('KEYS', `${cfg.keyPrefix}*`)) as string[]).sort();
    expect(keys).toEqual([`${cfg.keyPrefix}{${KEY}}:lock`, `${cfg.keyPrefix}{${KEY}}:token`]);
    for (const k of keys) {
      const pttl = Number(await redis.command('PTTL', k));
      expect(pttl, k).toBeGreaterThan(0);
    }
    await lock?.release();
    expect(await redis.command('EXISTS', `${cfg.keyPrefix}{${KEY}}:lock`)).toBe(0);
  });

  it('in a Cluster, a token and its lock hash to the same slot', async () => {
    const [node] = inject('redisCluster').nodes;
    if (!node) throw new Error('no cluster');
    const client = new Redis(node.port, node.host);
    try {
      const store = await open(config(redis));
      const slots = await Promise.all([store.tokenKey(KEY), store.lockKey(KEY)].map((k) => client.call('CLUSTER', 'KEYSLOT', k)));
      expect(slots[0]).toBe(slots[1]);
      expect(await client.call('CLUSTER', 'KEYSLOT', store.tokenKey('b'.repeat(32)))).not.toBe(slots[0]);
    } finally {
      client.disconnect();
    }
  });

  it('a token that expires in a few ms is written with a TTL that ends with it, and an expired one is not written', async () => {
    const cfg = config(redis);
    const store = await open(cfg);
    await store.put(KEY, token('short', Date.now() - 59_000)); // 1 s left
    const pttl = Number(await redis.command('PTTL', `${cfg.keyPrefix}{${KEY}}:token`));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(1_000);
    await store.put('b'.repeat(32), token('dead', Date.now() - 120_000));
    expect(await redis.command('EXISTS', `${cfg.keyPrefix}{${'b'.repeat(32)}}:token`)).toBe(0);
  });

  it('newer wins: a late writer never replaces a fresher token', async () => {
    const store = await open(config(redis));
    const now = Date.now();
    await store.put(KEY, token('fresh', now));
    await store.put(KEY, token('stale', now - 10_000));
    expect(ok(await store.get(KEY))?.value.reveal()).toBe('fresh');
    await store.put(KEY, token('fresher', now + 5));
    expect(ok(await store.get(KEY))?.value.reveal()).toBe('fresher');
  });

  it('compare-and-invalidate deletes only the token that failed, and tells the other pods', async () => {
    const cfg = config(redis);
    const [a, b] = [await open(cfg), await open(cfg)];
    const events: StoreEvent[] = [];
    b.onEvent((e) => events.push(e));
    const t = token('current');
    await a.put(KEY, t);
    expect(ok(await a.invalidate(KEY, token('older').fingerprint))).toBe(false);
    expect(ok(await a.get(KEY))?.fingerprint).toBe(t.fingerprint);
    expect(ok(await a.invalidate(KEY, t.fingerprint))).toBe(true);
    expect(ok(await a.get(KEY))).toBeUndefined();
    await waitUntil(() => events.some((e) => e.kind === 'invalidated' && e.fingerprint === t.fingerprint), 2_000, 5, 'invalidated event');
    expect(events.some((e) => e.kind === 'refreshed' && e.fingerprint === t.fingerprint)).toBe(true);
  });
});

describe('events', () => {
  // A waiter reads with MGET (token and failure marker); GET also counts the put script's own GET, so it is not used.
  const reads = async (): Promise<number> => {
    const stats = String(await redis.command('INFO', 'commandstats'));
    return Number(/^cmdstat_mget:calls=(\d+)/m.exec(stats)?.[1] ?? 0);
  };

  it('a refreshed event carries the (sealed) value: a waiting pod has the token without reading the store', async () => {
    const cfg = config(redis, { encryptionKeys: [{ id: 'k1', key: key32() }] });
    const [a, b] = [await open(cfg), await open(cfg)];
    const t = token(`secret-token-${randomBytes(8).toString('hex')}`);
    const before = await reads();
    const waiting = b.waitForEvent(KEY, 5_000);
    await a.put(KEY, t);
    const carried = await waiting;
    expect(await reads()).toBe(before);
    expect(carried?.fingerprint).toBe(t.fingerprint);
    expect(carried?.value.reveal()).toBe(t.value.reveal());
    expect(carried?.expiresAtMs).toBe(t.expiresAtMs);
    expect(carried?.issuedAtMs).toBe(t.issuedAtMs);
  });

  it('an event whose value does not open here (another encryption key) carries no token: the waiter reads instead', async () => {
    const cfg = config(redis, { encryptionKeys: [{ id: 'k1', key: key32() }] });
    const a = await open(cfg);
    const other = await open({ ...cfg, encryptionKeys: [{ id: 'k1', key: key32() }] });
    const events: StoreEvent[] = [];
    other.onEvent((e) => events.push(e));
    const waiting = other.waitForEvent(KEY, 5_000);
    const t = token('another-key');
    const startedMs = Date.now();
    await a.put(KEY, t);
    expect(await waiting).toBeUndefined();
    expect(Date.now() - startedMs).toBeLessThan(4_000); // woken by the event, not by the timeout
    expect(events).toContainEqual({ kind: 'refreshed', key: KEY, fingerprint: t.fingerprint, token: undefined });
  });
});

describe('encryption', () => {
  it('sealed values never contain the token; rotation: the first key seals, all keys open', async () => {
    const [k1, k2] = [key32(), key32()];
    const cfg = config(redis, { encryptionKeys: [{ id: 'k1', key: k1 }] });
    const old = await open(cfg);
    const t = token(`secret-token-${randomBytes(8).toString('hex')}`);
    await old.put(KEY, t);
    const raw = String(await redis.command('GET', `${cfg.keyPrefix}{${KEY}}:token`));
    expect(raw).not.toContain(t.value.reveal());
    expect(JSON.parse(raw)).toMatchObject({ v: 1, fp: t.fingerprint, enc: { kid: 'k1' } });
    const rotated = await open({ ...cfg, encryptionKeys: [{ id: 'k2', key: k2 }, { id: 'k1', key: k1 }] });
    expect(ok(await rotated.get(KEY))?.value.reveal()).toBe(t.value.reveal());
    await rotated.put(KEY, token('after-rotation', Date.now() + 10));
    const rewritten = JSON.parse(String(await redis.command('GET', `${cfg.keyPrefix}{${KEY}}:token`))) as { enc: { kid: string } };
    expect(rewritten.enc.kid).toBe('k2');
  });

  it('a tampered ciphertext, an edited expiry or a planted plaintext value is a miss, logged without content, and cleared', async () => {
    const cfg = config(redis, { encryptionKeys: [{ id: 'k1', key: key32() }] });
    const store = await open(cfg);
    const redisKey = `${cfg.keyPrefix}{${KEY}}:token`;
    const t = token(`tok-${randomBytes(8).toString('hex')}`);
    const cases: [string, (v: Record<string, unknown> & { enc: Record<string, string> }) => unknown][] = [
      ['ciphertext', (v) => ({ ...v, enc: { ...v.enc, ct: Buffer.from('x'.repeat(40)).toString('base64') } })],
      ['short tag', (v) => ({ ...v, enc: { ...v.enc, tag: Buffer.from(v.enc['tag'] ?? '', 'base64').subarray(0, 8).toString('base64') } })],
      ['expiry', (v) => ({ ...v, exp: Number(v['exp']) + 3_600_000 })],
      ['plaintext', (v) => ({ v: 1, iat: v['iat'], exp: v['exp'], fp: v['fp'], tok: { t: 'planted', ty: 'Bearer', src: 'expires_in' } })],
      ['garbage', () => 'not json at all'],
    ];
    for (const [name, tamper] of cases) {
      await store.put(KEY, token(t.value.reveal(), Date.now()));
      const sealed = JSON.parse(String(await redis.command('GET', redisKey))) as Record<string, unknown> & { enc: Record<string, string> };
      const bad = tamper(sealed);
      await redis.command('SET', redisKey, typeof bad === 'string' ? bad : JSON.stringify(bad), 'PX', 60_000);
      const before = lines.length;
      expect(ok(await store.get(KEY)), name).toBeUndefined();
      expect(await redis.command('EXISTS', redisKey), name).toBe(0);
      const logged = lines.slice(before).join('');
      expect(logged, name).toContain('store.bad_value');
      expect(logged, name).not.toContain(t.value.reveal());
    }
  });

  it('the token manager treats a tampered value as a miss and overwrites it with a fresh token', async () => {
    const cfg = config(redis, { encryptionKeys: [{ id: 'k1', key: key32() }] });
    const store = await open(cfg);
    let fetches = 0;
    const auth = { type: 'oauth2', identity: KEY, refreshAheadRatio: 0.2 } as unknown as OAuth2Auth;
    const manager = new TokenManager({
      store,
      log,
      fetcher: { fetchToken: async () => token(`fetched-${++fetches}`) },
    });
    manager.setRoutes([{ name: 'r', auth } as never]);
    await redis.command('SET', `${cfg.keyPrefix}{${KEY}}:token`, '{"v":1,"iat":1,"exp":99999999999999,"fp":"x","enc":{"kid":"k1","iv":"AAAA","ct":"AAAA","tag":"AAAA"}}', 'PX', 60_000);
    const got = await manager.get('r');
    expect(got.source).toBe('fetched');
    expect(fetches).toBe(1);
    expect(ok(await store.get(KEY))?.fingerprint).toBe(got.token.fingerprint);
    manager.close();
  });

  // Defect: a pod deleted every value it could not decrypt, so during a key rollout old pods deleted the new pods'
  // tokens and every pod refetched, breaking one fetch per fleet.
  it('a key rollout never deletes another pod\'s token: a value under a key id this pod lacks is left alone', async () => {
    const [k1, k2] = [{ id: 'k1', key: key32() }, { id: 'k2', key: key32() }];
    const prefix = config(redis).keyPrefix;
    const newPod = await open(config(redis, { keyPrefix: prefix, encryptionKeys: [k2, k1] })); // seals with k2
    const oldPod = await open(config(redis, { keyPrefix: prefix, encryptionKeys: [k1] }));
    const t = token(`tok-${randomBytes(8).toString('hex')}`);
    await newPod.put(KEY, t);
    expect(ok(await oldPod.get(KEY))).toBeUndefined();
    expect(ok(await oldPod.read(KEY))).toMatchObject({ token: undefined, unreadable: 'foreign' });
    expect(await redis.command('EXISTS', `${prefix}{${KEY}}:token`)).toBe(1);
    expect(ok(await newPod.get(KEY))?.fingerprint).toBe(t.fingerprint);

    // The old pod's requests are served by a fetch of its own, which does not overwrite the fleet's token.
    let fetches = 0;
    const auth = { type: 'oauth2', identity: KEY, refreshAheadRatio: 0.2 } as unknown as OAuth2Auth;
    const manager = new TokenManager({ store: oldPod, log, fetcher: { fetchToken: async () => token(`own-${++fetches}`) } });
    try {
      manager.setRoutes([{ name: 'r', auth } as never]);
      const got = await manager.get('r');
      expect(got).toMatchObject({ source: 'fetched' });
      expect(fetches).toBe(1);
      expect(ok(await newPod.get(KEY))?.fingerprint).toBe(t.fingerprint);
    } finally {
      manager.close();
    }

    // The documented order: the new key goes out second (opens, never seals) before it is made first.
    const rolledOut = await open(config(redis, { keyPrefix: prefix, encryptionKeys: [k1, k2] }));
    expect(ok(await rolledOut.get(KEY))?.fingerprint).toBe(t.fingerprint);
  });
});

describe('the lock', () => {
  it('one owner at a time; the lease is renewed while held; release is owner-only', async () => {
    const cfg = config(redis, { lockLeaseMs: 300 });
    const [a, b] = [await open(cfg), await open(cfg)];
    const held = ok(await a.tryLock(KEY));
    expect(held?.held).toBe(true);
    expect(ok(await b.tryLock(KEY))).toBeUndefined();
    await new Promise((r) => setTimeout(r, 1_000)); // > 3 leases: only renewal keeps it
    expect(held?.held).toBe(true);
    expect(ok(await b.tryLock(KEY))).toBeUndefined();
    await held?.release();
    const next = ok(await b.tryLock(KEY));
    expect(next?.held).toBe(true);
    // A stale handle (already released) must not delete the new owner's lock.
    await held?.release();
    expect(await redis.command('EXISTS', `${cfg.keyPrefix}{${KEY}}:lock`)).toBe(1);
    await next?.release();
  });

  it('readOrLock takes the lock with an empty read only, atomically, and its lock is renewed and released like tryLock', async () => {
    const cfg = config(redis, { lockLeaseMs: 300 });
    const [a, b] = [await open(cfg), await open(cfg)];
    const first = ok(await a.readOrLock(KEY));
    expect(first.token).toBeUndefined();
    expect(first.failure).toBeUndefined();
    expect(first.lock?.held).toBe(true);
    // Held: another pod reads nothing and gets no lock, by either call.
    const second = ok(await b.readOrLock(KEY));
    expect(second.lock).toBeUndefined();
    expect(ok(await b.tryLock(KEY))).toBeUndefined();
    await new Promise((r) => setTimeout(r, 1_000)); // > 3 leases: only renewal keeps it
    expect(ok(await b.tryLock(KEY))).toBeUndefined();
    await first.lock?.release();
    // A shared token: returned, and no lock is taken.
    const t = token('shared');
    await a.put(KEY, t);
    const withToken = ok(await b.readOrLock(KEY));
    expect(withToken.token?.fingerprint).toBe(t.fingerprint);
    expect(withToken.lock).toBeUndefined();
    expect(await redis.command('EXISTS', `${cfg.keyPrefix}{${KEY}}:lock`)).toBe(0);
    // A shared failure and no token: returned, and no lock is taken either.
    await redis.command('DEL', `${cfg.keyPrefix}{${KEY}}:token`);
    await a.putFailure(KEY, { kind: 'unavailable', message: 'down', untilMs: Date.now() + 5_000 });
    const withFailure = ok(await b.readOrLock(KEY));
    expect(withFailure.failure?.kind).toBe('unavailable');
    expect(withFailure.lock).toBeUndefined();
    expect(await redis.command('EXISTS', `${cfg.keyPrefix}{${KEY}}:lock`)).toBe(0);
  });

  it('readOrLock for a refresh locks while the store still holds the token being refreshed, and says whether the lock is held', async () => {
    const cfg = config(redis);
    const [a, b] = [await open(cfg), await open(cfg)];
    const mine = token('mine', Date.now() - 1_000);
    await a.put(KEY, mine);
    // A miss takes the shared token and no lock; nobody holds it.
    expect(ok(await b.readOrLock(KEY))).toMatchObject({ token: { fingerprint: mine.fingerprint }, lock: undefined, lockHeld: false });
    // Another pod already has a newer one than ours: handed back, no lock.
    expect(ok(await b.readOrLock(KEY, { lockIfIssuedAtOrBeforeMs: mine.issuedAtMs - 1 }))).toMatchObject({ lock: undefined, lockHeld: false });
    // The store holds the very token we refresh: the lock comes in the same round trip.
    const refreshing = ok(await a.readOrLock(KEY, { lockIfIssuedAtOrBeforeMs: mine.issuedAtMs }));
    expect(refreshing.lock?.held).toBe(true);
    expect(refreshing.lockHeld).toBe(true);
    // Meanwhile another pod learns that someone holds it.
    expect(ok(await b.readOrLock(KEY, { lockIfIssuedAtOrBeforeMs: mine.issuedAtMs }))).toMatchObject({ lock: undefined, lockHeld: true });
    await refreshing.lock?.release();
  });

  it('a holder whose lease was taken over notices and does not delete the new lock', async () => {
    const cfg = config(redis, { lockLeaseMs: 300 });
    const a = await open(cfg);
    const held = ok(await a.tryLock(KEY));
    const lockKey = `${cfg.keyPrefix}{${KEY}}:lock`;
    await redis.command('SET', lockKey, 'someone-else', 'PX', 5_000); // as if our lease had expired and another pod took it
    await waitUntil(() => held?.held === false, 2_000, 20, 'renewal to notice the lost lease');
    await held?.release();
    expect(await redis.command('GET', lockKey)).toBe('someone-else');
  });
});

describe('failure behaviour', () => {
  it('a dead Redis fails a call at once; a frozen one within the command deadline, then the breaker skips it', async () => {
    const own = await startRedis();
    try {
      const store = await open(config(own, { commandTimeoutMs: 50 }));
      own.freeze();
      let t0 = performance.now();
      expect(await store.get(KEY)).toMatchObject({ ok: false, outage: { op: 'get', reason: 'timeout' } });
      const frozenMs = performance.now() - t0;
      expect(frozenMs).toBeLessThan(50 + 100);
      t0 = performance.now();
      expect(await store.get(KEY)).toMatchObject({ ok: false, outage: { op: 'get', reason: 'down' } });
      expect(performance.now() - t0).toBeLessThan(10);
      expect(store.health()).toBe('degraded');
      own.thaw();
      await own.kill('SIGKILL');
      await waitUntil(() => store.health() === 'degraded', 2_000, 10, 'disconnect noticed');
      t0 = performance.now();
      expect(await store.get(KEY)).toMatchObject({ ok: false, outage: { op: 'get', reason: 'down' } });
      const deadMs = performance.now() - t0;
      expect(deadMs).toBeLessThan(10);
      console.log(`store call: frozen Redis fails after ${frozenMs.toFixed(1)} ms (deadline 50 ms); dead Redis after ${deadMs.toFixed(2)} ms`);
    } finally {
      await own.stop();
    }
  });

  it("a late Redis is waited for up to the call's own deadline (not the breaker's), and a lock given up on is not left held", async () => {
    const own = await startRedis();
    try {
      const cfg = config(own, { commandTimeoutMs: 1_000 });
      const store = await open(cfg);
      own.freeze();
      let t0 = performance.now();
      expect(await store.read(KEY, { timeoutMs: 80 })).toMatchObject({ ok: false, outage: { op: 'get', reason: 'timeout' } });
      // A lock request given up on: carried out when Redis thaws, and released right behind it.
      expect(await store.readOrLock(KEY, { timeoutMs: 80 })).toMatchObject({ ok: false, outage: { reason: 'timeout' } });
      const shortMs = performance.now() - t0;
      expect(shortMs).toBeGreaterThanOrEqual(75);
      expect(shortMs).toBeLessThan(80 + 150);
      // Not a full deadline: the next call still tries (and waits), rather than being skipped by the breaker.
      t0 = performance.now();
      expect(await store.read(KEY, { timeoutMs: 80 })).toMatchObject({ ok: false, outage: { reason: 'timeout' } });
      expect(performance.now() - t0).toBeGreaterThanOrEqual(75);
      // Thawed: the same connection answers again, late commands and all.
      own.thaw();
      await waitUntil(async () => (await store.read(KEY)).ok, 3_000, 20, 'answers after the thaw');
      expect(await own.command('EXISTS', `${cfg.keyPrefix}{${KEY}}:lock`)).toBe(0);
    } finally {
      own.thaw();
      await own.stop();
    }
  });

  it('rediss:// with a CA, a client certificate and an ACL user', async () => {
    const certs = await makeCerts();
    const own = await startRedis({ tls: certs, tlsAuthClients: true, aclUser: { name: 'sidecar', password: 'acl-pass' } });
    try {
      const store = await open(
        config(own, {
          url: `rediss://127.0.0.1:${own.port}`,
          username: 'sidecar',
          password: new Secret('acl-pass'),
          tls: { ca: certs.ca, cert: certs.clientCert, key: new Secret(certs.clientKey), servername: 'localhost' },
        }),
      );
      await store.put(KEY, token('over-tls'));
      expect(ok(await store.get(KEY))?.value.reveal()).toBe('over-tls');
    } finally {
      await own.stop();
    }
  });

  it('a wrong password leaves the store degraded, never crashes, never logs the password, and says why at warn once', async () => {
    const own = await startRedis({ password: 'right-pass' });
    try {
      const before = lines.length;
      const store = await RedisStore.connect(config(own, { url: `redis://127.0.0.1:${own.port}`, password: new Secret('wrong-pass-xyz') }), log);
      stores.push(store);
      await new Promise((r) => setTimeout(r, 1_000)); // several reconnect attempts
      expect(store.health()).toBe('degraded');
      const answer = await store.get(KEY);
      expect(answer).toMatchObject({ ok: false, outage: { op: 'get', reason: 'down' } });
      expect(answer.ok ? '' : answer.outage.message).toMatch(/WRONGPASS/);
      const logged = lines.slice(before);
      expect(logged.join('')).not.toContain('wrong-pass-xyz');
      const warned = logged.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['level'] === 'warn' && l['event'] === 'store.connect_failed');
      expect(warned.filter((l) => l['role'] === 'commands')).toHaveLength(1);
      expect(String(warned[0]?.['err'])).toMatch(/WRONGPASS/);
    } finally {
      await own.stop();
    }
  });
});

