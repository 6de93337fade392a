/** The memcached store against real memcached processes: keys, TTLs, newer-wins, the lock, polling, encryption, failures. */
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
const key32 = () => randomBytes(32);

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

describe('keys, values and TTLs', () => {
  it('keys are prefix + {hash} + kind, reveal nothing, always carry a TTL, and the lock is gone once released', async () => {
    const cfg = config([mc]);
    const store = await open(cfg);
    const t = token(`tok-${randomBytes(6).toString('hex')}`);
    await store.put(KEY, t);
    await store.putFailure('b'.repeat(32), { kind: 'unavailable', message: 'down', untilMs: Date.now() + 5_000 });
    const lock = ok(await store.tryLock(KEY));
    expect(lock?.held).toBe(true);
    const keys = (await mc.keys()).filter((k) => k.key.startsWith(cfg.keyPrefix));
    expect(keys.map((k) => k.key).sort()).toEqual([`${cfg.keyPrefix}{${KEY}}:lock`, `${cfg.keyPrefix}{${KEY}}:token`, `${cfg.keyPrefix}{${'b'.repeat(32)}}:failure`]);
    const nowS = Date.now() / 1000;
    for (const k of keys) {
      expect(k.exp, k.key).toBeGreaterThan(nowS);
      expect(k.exp, k.key).toBeLessThanOrEqual(nowS + 61);
      expect(k.key).not.toContain(t.value.reveal());
    }
    await lock?.release();
    expect(await mc.get(`${cfg.keyPrefix}{${KEY}}:lock`)).toBeUndefined();
  });

  it('a token is gone from memcached when it expires, and an expired one is not written', async () => {
    const cfg = config([mc]);
    const store = await open(cfg);
    await store.put(KEY, token('short', Date.now() - 58_500)); // 1.5 s left: written with a 2 s TTL
    expect(ok(await store.get(KEY))?.value.reveal()).toBe('short');
    await sleep(2_600);
    expect(await mc.get(`${cfg.keyPrefix}{${KEY}}:token`)).toBeUndefined();
    expect(ok(await store.get(KEY))).toBeUndefined();
    await store.put('b'.repeat(32), token('dead', Date.now() - 120_000));
    expect(await mc.get(`${cfg.keyPrefix}{${'b'.repeat(32)}}:token`)).toBeUndefined();
  });

  it('newer wins: a late writer never replaces a fresher token; a put clears the shared failure', async () => {
    const store = await open(config([mc]));
    const now = Date.now();
    await store.putFailure(KEY, { kind: 'unavailable', message: 'idp down', untilMs: now + 10_000 });
    expect(ok(await store.read(KEY)).failure).toMatchObject({ kind: 'unavailable', message: 'idp down' });
    await store.put(KEY, token('fresh', now));
    expect(ok(await store.read(KEY)).failure).toBeUndefined();
    await store.put(KEY, token('stale', now - 10_000));
    expect(ok(await store.get(KEY))?.value.reveal()).toBe('fresh');
    await store.put(KEY, token('fresher', now + 5));
    expect(ok(await store.get(KEY))?.value.reveal()).toBe('fresher');
  });

  it('concurrent writers from four pods, in any order: the newest token is what stays', async () => {
    const cfg = config([mc], { commandTimeoutMs: 1_000 });
    const writers = await Promise.all(Array.from({ length: 4 }, () => open(cfg)));
    for (let round = 0; round < 5; round++) {
      const now = Date.now() + round * 1_000;
      const tokens = Array.from({ length: 40 }, (_, i) => token(`r${round}-t${i}`, now + i)).sort(() => Math.random() - 0.5);
      const answers = await Promise.all(tokens.map((t, i) => writers[i % writers.length]?.put(KEY, t)));
      expect(answers.every((a) => a?.ok)).toBe(true);
      expect(ok(await writers[0]!.get(KEY))?.value.reveal()).toBe(`r${round}-t39`);
    }
  });

  it('compare-and-invalidate deletes only the token that failed, and tells this pod', async () => {
    const store = await open(config([mc]));
    const events: StoreEvent[] = [];
    store.onEvent((e) => events.push(e));
    const t = token('current');
    await store.put(KEY, t);
    expect(ok(await store.invalidate(KEY, token('older').fingerprint))).toBe(false);
    expect(ok(await store.get(KEY))?.fingerprint).toBe(t.fingerprint);
    expect(ok(await store.invalidate(KEY, t.fingerprint))).toBe(true);
    expect(ok(await store.get(KEY))).toBeUndefined();
    expect(ok(await store.invalidate(KEY, t.fingerprint))).toBe(false);
    expect(events).toContainEqual({ kind: 'invalidated', key: KEY, fingerprint: t.fingerprint });
    expect(store.eventsLive()).toBe(false);
  });
});

describe('the lock', () => {
  it('one owner at a time; the lease is renewed while held; release is owner-only', async () => {
    // A 4 s item renewed every 833 ms: memcached's clock ticks in whole seconds, so the item may end ~1 s early, and a
    // shorter lease lost the lock to a >1 s event-loop stall of a loaded CI worker (the behaviour wanted, not here).
    const cfg = config([mc], { lockLeaseMs: 2_500 });
    const [a, b] = [await open(cfg), await open(cfg)];
    const held = ok(await a.tryLock(KEY));
    expect(held?.held).toBe(true);
    expect(ok(await b.tryLock(KEY))).toBeUndefined();
    await sleep(5_000); // past the item's TTL: only renewal keeps it
    expect(held?.held).toBe(true);
    expect(ok(await b.tryLock(KEY))).toBeUndefined();
    await held?.release();
    const next = ok(await b.tryLock(KEY));
    expect(next?.held).toBe(true);
    await held?.release(); // a stale handle must not delete the new owner's lock
    expect(await mc.get(`${cfg.keyPrefix}{${KEY}}:lock`)).toBeDefined();
    await next?.release();
    expect(await mc.get(`${cfg.keyPrefix}{${KEY}}:lock`)).toBeUndefined();
  });

  it('a dead holder costs at most its lease: the lock can be taken again once the item expires', async () => {
    const cfg = config([mc], { lockLeaseMs: 1_000 }); // 2 s item
    const [a, b] = [await open(cfg), await open(cfg)];
    expect(ok(await a.tryLock(KEY))?.held).toBe(true);
    await a.close(); // its renewals stop, as when the pod dies
    const t0 = performance.now();
    await waitUntil(async () => ok(await b.tryLock(KEY)), 4_000, 50, 'the lease to end');
    const ms = performance.now() - t0;
    expect(ms).toBeGreaterThan(800);
    expect(ms).toBeLessThan(2_300);
    console.log(`memcached lock: a dead holder's lease (1 s, a 2 s item) ended after ${ms.toFixed(0)} ms`);
  });

  it('a holder whose lock was taken over notices and does not delete the new lock', async () => {
    const cfg = config([mc], { lockLeaseMs: 500 });
    const a = await open(cfg);
    const held = ok(await a.tryLock(KEY));
    const lockKey = `${cfg.keyPrefix}{${KEY}}:lock`;
    await mc.set(lockKey, 'someone-else', 5);
    await waitUntil(() => held?.held === false, 2_000, 20, 'renewal to notice the lost lease');
    await held?.release();
    expect(await mc.get(lockKey)).toBe('someone-else');
  });

  it('readOrLock takes the lock only with nothing to take, reads again behind it, and says whether it is held', async () => {
    const cfg = config([mc]);
    const [a, b] = [await open(cfg), await open(cfg)];
    const first = ok(await a.readOrLock(KEY));
    expect(first).toMatchObject({ token: undefined, failure: undefined, lockHeld: true });
    expect(first.lock?.held).toBe(true);
    expect(ok(await b.readOrLock(KEY))).toMatchObject({ lock: undefined, lockHeld: true });
    await first.lock?.release();
    // A shared token: returned, no lock taken.
    const mine = token('mine', Date.now() - 1_000);
    await a.put(KEY, mine);
    expect(ok(await b.readOrLock(KEY))).toMatchObject({ token: { fingerprint: mine.fingerprint }, lock: undefined, lockHeld: false });
    // Another pod already has a newer one than the token being refreshed: no lock.
    expect(ok(await b.readOrLock(KEY, { lockIfIssuedAtOrBeforeMs: mine.issuedAtMs - 1 }))).toMatchObject({ lock: undefined, lockHeld: false });
    // The store holds the very token we refresh: the lock comes with the read.
    const refreshing = ok(await a.readOrLock(KEY, { lockIfIssuedAtOrBeforeMs: mine.issuedAtMs }));
    expect(refreshing.lock?.held).toBe(true);
    expect(ok(await b.readOrLock(KEY, { lockIfIssuedAtOrBeforeMs: mine.issuedAtMs }))).toMatchObject({ lock: undefined, lockHeld: true });
    await refreshing.lock?.release();
    // A shared failure and no token: returned, and no lock.
    await mc.command(`delete ${cfg.keyPrefix}{${KEY}}:token\r\n`);
    await a.putFailure(KEY, { kind: 'rejected', message: 'bad secret', untilMs: Date.now() + 5_000 });
    const withFailure = ok(await b.readOrLock(KEY));
    expect(withFailure).toMatchObject({ failure: { kind: 'rejected', message: 'bad secret' }, lock: undefined, lockHeld: false });
    expect(await mc.get(`${cfg.keyPrefix}{${KEY}}:lock`)).toBeUndefined();
  });

  it('of 20 pods racing readOrLock on an empty key, exactly one takes the lock', async () => {
    const cfg = config([mc]);
    const pods = await Promise.all(Array.from({ length: 20 }, () => open(cfg)));
    const results = await Promise.all(pods.map((p) => p.readOrLock(KEY).then(ok)));
    expect(results.filter((r) => r.lock).length).toBe(1);
    expect(results.every((r) => r.lockHeld)).toBe(true);
  });
});

describe('waiting without pub/sub', () => {
  it('a waiter is handed the token within a poll of its write, without waiting out its timeout', async () => {
    const cfg = config([mc], { encryptionKeys: [{ id: 'k1', key: key32() }] });
    const [a, b] = [await open(cfg), await open(cfg)];
    const lock = ok(await a.readOrLock(KEY)).lock;
    expect(ok(await b.readOrLock(KEY)).lockHeld).toBe(true);
    const waiting = b.waitForEvent(KEY, 5_000);
    await sleep(120);
    const t = token(`secret-${randomBytes(6).toString('hex')}`);
    const t0 = performance.now();
    await a.put(KEY, t);
    const carried = await waiting;
    const ms = performance.now() - t0;
    await lock?.release();
    expect(carried?.fingerprint).toBe(t.fingerprint);
    expect(carried?.value.reveal()).toBe(t.value.reveal());
    expect(ms).toBeLessThan(250); // within a poll or so (50 ms), far from the 5 s timeout
  });

  it('a waiter wakes early without a token when the holder gives up (lock gone) or shares a failure', async () => {
    const cfg = config([mc]);
    const [a, b] = [await open(cfg), await open(cfg)];
    let lock = ok(await a.readOrLock(KEY)).lock;
    expect(ok(await b.readOrLock(KEY)).lockHeld).toBe(true);
    let t0 = performance.now();
    let waiting = b.waitForEvent(KEY, 5_000);
    await lock?.release();
    expect(await waiting).toBeUndefined();
    expect(performance.now() - t0).toBeLessThan(500);
    lock = ok(await a.readOrLock(KEY)).lock;
    expect(ok(await b.readOrLock(KEY)).lockHeld).toBe(true);
    t0 = performance.now();
    waiting = b.waitForEvent(KEY, 5_000);
    await a.putFailure(KEY, { kind: 'unavailable', message: 'idp down', untilMs: Date.now() + 5_000 });
    expect(await waiting).toBeUndefined();
    expect(performance.now() - t0).toBeLessThan(500);
    await lock?.release();
  });

  it('while the holder works and nothing changes, the waiter waits its whole timeout', async () => {
    const cfg = config([mc]);
    const [a, b] = [await open(cfg), await open(cfg)];
    const lock = ok(await a.readOrLock(KEY)).lock;
    expect(ok(await b.readOrLock(KEY)).lockHeld).toBe(true);
    const t0 = performance.now();
    expect(await b.waitForEvent(KEY, 400)).toBeUndefined();
    expect(performance.now() - t0).toBeGreaterThanOrEqual(395);
    await lock?.release();
  });
});

describe('encryption and unreadable values', () => {
  it('sealed tokens and grant state never contain the secret; another key cannot open them', async () => {
    const cfg = config([mc], { encryptionKeys: [{ id: 'k1', key: key32() }] });
    const store = await open(cfg);
    const t = token(`secret-token-${randomBytes(8).toString('hex')}`);
    await store.put(KEY, t);
    const raw = (await mc.get(`${cfg.keyPrefix}{${KEY}}:token`)) ?? '';
    expect(raw).not.toContain(t.value.reveal());
    expect(JSON.parse(raw)).toMatchObject({ v: 1, fp: t.fingerprint, enc: { kid: 'k1' } });
    const refreshToken = `rt-${randomBytes(8).toString('hex')}`;
    await store.putGrantState(KEY, refreshToken, 30 * 86_400_000);
    const grantRaw = (await mc.get(`${cfg.keyPrefix}{${KEY}}:grant`)) ?? '';
    expect(grantRaw).not.toContain(refreshToken);
    expect(JSON.parse(grantRaw)).toMatchObject({ v: 1, enc: { kid: 'k1' } });
    expect(ok(await store.getGrantState(KEY))).toEqual({ value: refreshToken, unreadable: false });
    const other = await open({ ...cfg, encryptionKeys: [{ id: 'k1', key: key32() }] });
    expect(ok(await other.getGrantState(KEY))).toEqual({ value: undefined, unreadable: true });
    const plain = await open({ ...cfg, encryptionKeys: [] });
    await plain.putGrantState('b'.repeat(32), 'plain-rt', 60_000);
    expect(ok(await store.getGrantState('b'.repeat(32)))).toEqual({ value: undefined, unreadable: true });
  });

  it('a tampered, planted or garbage value is a miss, logged without content, and cleared', async () => {
    const cfg = config([mc], { encryptionKeys: [{ id: 'k1', key: key32() }] });
    const store = await open(cfg);
    const mcKey = `${cfg.keyPrefix}{${KEY}}:token`;
    const t = token(`tok-${randomBytes(8).toString('hex')}`);
    const cases: [string, (v: Record<string, unknown> & { enc: Record<string, string> }) => unknown][] = [
      ['ciphertext', (v) => ({ ...v, enc: { ...v.enc, ct: Buffer.from('x'.repeat(40)).toString('base64') } })],
      ['expiry', (v) => ({ ...v, exp: Number(v['exp']) + 3_600_000 })],
      ['plaintext', (v) => ({ v: 1, iat: v['iat'], exp: v['exp'], fp: v['fp'], tok: { t: 'planted', ty: 'Bearer', src: 'expires_in' } })],
      ['garbage', () => 'not json at all'],
    ];
    for (const [name, tamper] of cases) {
      await store.put(KEY, token(t.value.reveal(), Date.now()));
      const sealed = JSON.parse((await mc.get(mcKey)) ?? '') as Record<string, unknown> & { enc: Record<string, string> };
      const bad = tamper(sealed);
      await mc.set(mcKey, typeof bad === 'string' ? bad : JSON.stringify(bad));
      const before = lines.length;
      expect(ok(await store.read(KEY)), name).toMatchObject({ token: undefined, unreadable: 'bad' });
      expect(await mc.get(mcKey), name).toBeUndefined();
      const logged = lines.slice(before).join('');
      expect(logged, name).toContain('store.bad_value');
      expect(logged, name).not.toContain(t.value.reveal());
    }
  });

  it("a value under a key id this pod lacks (a key rollout) is left alone, and rotation opens the old key's values", async () => {
    const [k1, k2] = [{ id: 'k1', key: key32() }, { id: 'k2', key: key32() }];
    const prefix = config([mc]).keyPrefix;
    const newPod = await open(config([mc], { keyPrefix: prefix, encryptionKeys: [k2, k1] }));
    const oldPod = await open(config([mc], { keyPrefix: prefix, encryptionKeys: [k1] }));
    const t = token(`tok-${randomBytes(8).toString('hex')}`);
    await newPod.put(KEY, t);
    expect(ok(await oldPod.read(KEY))).toMatchObject({ token: undefined, unreadable: 'foreign' });
    expect(await mc.get(`${prefix}{${KEY}}:token`)).toBeDefined();
    expect(ok(await newPod.get(KEY))?.fingerprint).toBe(t.fingerprint);
    const rolledOut = await open(config([mc], { keyPrefix: prefix, encryptionKeys: [k1, k2] }));
    expect(ok(await rolledOut.get(KEY))?.fingerprint).toBe(t.fingerprint);
  });
});
