/**
 * Issue 21: a Redis that answers late is not a Redis that is down. 4 sidecar processes share one real redis-server
 * through a latency relay (round trip 0, 160 or 300 ms), the token endpoint takes 300 ms, and the refresh path's store
 * deadline (`store.redis.coordinationTimeout`) is left at its 1 s default: the fleet must still make one token call
 * per refresh. A frozen Redis is waited for up to that deadline, then each pod fetches for itself (counted as
 * `store_fallback_fetches_total{reason="timeout"}`); a dead one is skipped at once (`reason="down"`).
 *
 * One fleet serves every case, each on a route of its own (its own scope, so its own credential and store keys),
 * so a case always starts cold whatever the cases before it left in the store. The killed-Redis case runs last.
 */
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { fingerprintOf } from '../../src/core/token.js';
import { startLatencyRelay, type LatencyRelay } from '../../src/dev/latency-relay.js';
import { startCluster, startRedis, type RedisCluster, type RedisServer } from '../helpers/redis.js';
import { startSidecarProcess, writeConfig, type SidecarProcess } from '../helpers/sidecar-process.js';
import { waitUntil } from '../helpers/wait.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------------
// The relay itself: the fleet figures below are only as good as it is.

describe('latency relay', () => {
  /** An echo server that answers FIN with FIN (net's default), and one that resets every connection. */
  let echo: net.Server;
  let echoPort: number;
  beforeAll(async () => {
    echo = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
    echoPort = (echo.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise<void>((r) => echo.close(() => r()));
  });

  function connect(port: number): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
      s.once('error', reject);
    });
  }

  function readBytes(s: net.Socket, n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const parts: Buffer[] = [];
      let got = 0;
      const onData = (b: Buffer) => {
        parts.push(b);
        got += b.length;
        if (got >= n) {
          s.off('data', onData);
          resolve(Buffer.concat(parts));
        }
      };
      s.on('data', onData);
      s.once('error', reject);
    });
  }

  it('a round trip costs 2 × delay; order survives a delay that changes mid-stream; 4 MiB pass intact', async () => {
    const relay = await startLatencyRelay({ host: '127.0.0.1', port: echoPort, delayMs: 60 });
    try {
      const s = await connect(relay.port);
      const t0 = performance.now();
      s.write('x');
      await readBytes(s, 1);
      const rttMs = performance.now() - t0;
      expect(rttMs).toBeGreaterThanOrEqual(119); // timers fire no earlier than asked; 1 ms for clock rounding
      expect(rttMs).toBeLessThan(120 + 150);

      // Long delay, then none: the later chunks must queue behind the earlier ones, not overtake them.
      const sent: Buffer[] = [];
      const back = readBytes(s, 200 * 4);
      for (let i = 0; i < 200; i++) {
        if (i % 20 === 0) relay.setDelay(i % 40 === 0 ? 40 : 0);
        const chunk = Buffer.from(String(i).padStart(4, '0'));
        sent.push(chunk);
        s.write(chunk);
        if (i % 10 === 0) await sleep(1);
      }
      expect((await back).toString()).toBe(Buffer.concat(sent).toString());

      // More than the relay's high-water mark, read by a client that stalls: back-pressure, nothing lost.
      relay.setDelay(5);
      const big = randomBytes(4 << 20);
      const received = readBytes(s, big.length);
      s.pause();
      s.write(big);
      await sleep(300);
      s.resume();
      const got = await received;
      expect(createHash('sha256').update(got).digest('hex')).toBe(createHash('sha256').update(big).digest('hex'));
      s.destroy();
    } finally {
      await relay.close();
    }
  });

  it('slow drip: bytes trickle in pieces, in order, at the set pace, both ways', async () => {
    const relay = await startLatencyRelay({ host: '127.0.0.1', port: echoPort, delayMs: 0 });
    try {
      const s = await connect(relay.port);
      relay.setDrip({ bytes: 4, everyMs: 10 });
      const pieces: number[] = [];
      s.on('data', (b: Buffer) => pieces.push(b.length));
      const t0 = performance.now();
      const payload = Buffer.from('0123456789abcdefghijklmnopqrstuv'); // 32 B: 8 pieces up, 8 down
      s.write(payload);
      expect((await readBytes(s, payload.length)).toString()).toBe(payload.toString());
      const elapsedMs = performance.now() - t0;
      // 8 pieces each way, 10 ms apart: the echo sends each piece back as it comes, so about 8 × 10 ms in all.
      expect(elapsedMs).toBeGreaterThanOrEqual(70);
      expect(Math.max(...pieces)).toBeLessThanOrEqual(4);
      relay.setDrip(undefined);
      const t1 = performance.now();
      s.write(payload);
      await readBytes(s, payload.length);
      expect(performance.now() - t1).toBeLessThan(60);
      expect(() => relay.setDrip({ bytes: 0, everyMs: 1 })).toThrow(/drip/);
      s.destroy();
    } finally {
      await relay.close();
    }
  });

  it('a FIN and a reset reach the other side (after the delay); close() ends everything', async () => {
    const relay = await startLatencyRelay({ host: '127.0.0.1', port: echoPort, delayMs: 30 });
    const resetter = net.createServer((s) => setTimeout(() => s.resetAndDestroy(), 20));
    await new Promise<void>((r) => resetter.listen(0, '127.0.0.1', r));
    const toResetter = await startLatencyRelay({ host: '127.0.0.1', port: (resetter.address() as net.AddressInfo).port, delayMs: 30 });
    try {
      // Half-close: our FIN reaches the echo server, whose FIN comes back: the client sees 'end'.
      const a = await connect(relay.port);
      const ended = new Promise<void>((r) => a.once('end', r));
      a.end();
      await ended;
      await waitUntil(() => relay.connections === 0, 2_000, 10, 'the relay to drop the closed pair');

      // The target resets: the client's connection is reset too.
      const b = await connect(toResetter.port);
      const closed = new Promise<string | undefined>((r) => {
        b.once('error', (err: NodeJS.ErrnoException) => r(err.code));
        b.once('close', () => r(undefined));
      });
      expect(await closed).toBe('ECONNRESET');

      // close(): open connections are destroyed, not left to the peers.
      const c = await connect(relay.port);
      const cClosed = new Promise<void>((r) => c.once('close', () => r()));
      c.on('error', () => undefined);
      await waitUntil(() => relay.connections === 1, 2_000, 10, 'the relay to count the connection');
      await relay.close();
      await cClosed;
    } finally {
      await relay.close();
      await toResetter.close();
      await new Promise<void>((r) => resetter.close(() => r()));
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// The fleet on a slow store.

const PODS = 4;
const PER_POD = 10;
const IDP_DELAY_MS = 300;
/** The contract's default, not set in the config: the tests check the default. */
const COORDINATION_TIMEOUT_MS = 1_000;
/** Steady case: token lifetime and refresh-ahead share. */
const STEADY_LIFETIME_S = 3;
const STEADY_REFRESH_AHEAD = 0.3;

const ROUTES = ['cold-0', 'cold-160', 'cold-300', 'steady', 'frozen', 'dead'] as const;
type RouteName = (typeof ROUTES)[number] | 'cluster-160';

let redis: RedisServer;
let relay: LatencyRelay;
let idp: FakeIdp;
let vendor: EchoVendor;
const agent = new Agent({ connections: 64, keepAliveTimeout: 10_000 });
// Shared by both fleets below: closed once, after the last.
afterAll(() => agent.close());
let fleet: SidecarProcess[] = [];
/** One line per case, so the figures can be quoted. */
function report(line: string): void {
  console.log(`[slow-store] ${line}`);
}

/** A PING through the relay on a fresh connection: the round trip the pods see, relay and event loop included. */
async function pingMs(): Promise<number> {
  const s = net.connect({ host: relay.host, port: relay.port });
  try {
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const t0 = performance.now();
    s.write('PING\r\n');
    await new Promise<void>((resolve, reject) => {
      let got = '';
      s.on('data', (b: Buffer) => (got += b.toString()).includes('+PONG') && resolve());
      s.once('error', reject);
    });
    return performance.now() - t0;
  } finally {
    s.destroy();
  }
}

/** Token calls made for `route` (each route asks for its own scope). */
function tokenCalls(route: RouteName): number {
  return idp.requests.filter((r) => r.form.scope === route).length;
}

async function get(pod: SidecarProcess, route: RouteName): Promise<{ status: number; body: string }> {
  const res = await request(`${pod.proxyUrl}/${route}/x`, { dispatcher: agent });
  return { status: res.statusCode, body: await res.body.text() };
}

async function readyStore(pod: SidecarProcess): Promise<string> {
  const res = await request(`${pod.adminUrl}/readyz`, { dispatcher: agent });
  const body = (await res.body.json()) as { checks: { store: string } };
  return body.checks.store;
}

/** Every pod connected and not skipping the store after an earlier case's failures. */
async function storeOkEverywhere(timeoutMs = 10_000): Promise<void> {
  await waitUntil(async () => (await Promise.all(fleet.map(readyStore))).every((s) => s === 'ok'), timeoutMs, 50, 'every pod to report the store ok');
}

/** Sum of a counter's samples whose labels include `labels`, from one pod's /metrics (0 when absent). */
async function counter(pod: SidecarProcess, name: string, labels: Record<string, string>): Promise<number> {
  const res = await request(`${pod.adminUrl}/metrics`, { dispatcher: agent });
  const text = await res.body.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

const FALLBACKS = 'token_sidecar_store_fallback_fetches_total';

async function fallbacks(route: RouteName, reason?: string): Promise<number[]> {
  return Promise.all(fleet.map((p) => counter(p, FALLBACKS, { route, ...(reason === undefined ? {} : { reason }) })));
}

/** PER_POD concurrent requests on every pod; per pod, when its first and last answers came (ms from the start). */
async function burst(route: RouteName, pods = fleet): Promise<{ statuses: number[]; bodies: string[]; firstMs: number[]; lastMs: number[] }> {
  const t0 = performance.now();
  const perPod = await Promise.all(
    pods.map((pod) =>
      Promise.all(Array.from({ length: PER_POD }, () => get(pod, route).then((r) => ({ ...r, atMs: performance.now() - t0 })))),
    ),
  );
  const all = perPod.flat();
  return {
    statuses: all.map((r) => r.status),
    bodies: all.filter((r) => r.status !== 200).map((r) => r.body),
    firstMs: perPod.map((rs) => Math.min(...rs.map((r) => r.atMs))),
    lastMs: perPod.map((rs) => Math.max(...rs.map((r) => r.atMs))),
  };
}

const fmt = (ms: number[]) => ms.map((x) => x.toFixed(0)).join('/');

function fleetConfig(): Promise<string> {
  const routes = ROUTES.map(
    (name) => `
  - name: ${name}
    match: { pathPrefix: /${name} }
    upstream: ${vendor.url}/v2
    auth:
      type: oauth2
      tokenUrl: ${idp.url}
      clientId: fleet
      clientSecret: fleet-secret
      scopes: [${name}]${name === 'steady' ? `\n      refreshAhead: ${STEADY_REFRESH_AHEAD * 100}%` : ''}`,
  ).join('');
  // Timeouts and the lock lease left at their defaults on purpose: this is what a user gets.
  return writeConfig(`
version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
store:
  type: redis
  redis:
    url: ${relay.via(redis.url)}
    keyPrefix: "ss${randomBytes(4).toString('hex')}:"
routes:${routes}
`);
}

describe('a fleet of 4 on a slow Redis (through a latency relay)', () => {
  beforeAll(async () => {
    [redis, idp, vendor] = await Promise.all([
      startRedis(),
      startFakeIdp({ clients: { fleet: 'fleet-secret' }, defaultExpiresInS: 600 }),
      startEchoVendor(),
    ]);
    idp.setDelay(IDP_DELAY_MS);
    relay = await startLatencyRelay({ host: redis.host, port: redis.port, delayMs: 0 });
    const config = await fleetConfig();
    fleet = await Promise.all(Array.from({ length: PODS }, () => startSidecarProcess(config)));
    await storeOkEverywhere(15_000);
  });

  afterAll(async () => {
    await Promise.all(fleet.map((p) => p.kill('SIGKILL')));
    await Promise.all([relay.close(), redis.stop(), idp.close(), vendor.close()]);
  });

  afterEach(() => {
    idp.setBehavior({ kind: 'token' });
  });

  for (const [route, oneWayMs] of [['cold-0', 0], ['cold-160', 80], ['cold-300', 150]] as const) {
    it(`round trip ${oneWayMs * 2} ms: a cold burst of ${PER_POD} requests on each of ${PODS} pods makes exactly 1 token call`, async () => {
      relay.setDelay(oneWayMs);
      await storeOkEverywhere();
      const rttMs = await pingMs();
      const before = tokenCalls(route);
      const r = await burst(route);
      const calls = tokenCalls(route) - before;
      const fb = (await fallbacks(route)).reduce((a, b) => a + b, 0);
      report(`RTT ${String(oneWayMs * 2).padStart(3)} ms (PING ${rttMs.toFixed(0)} ms) | cold burst ${PODS}x${PER_POD} | token calls ${calls} | non-200 ${r.statuses.filter((s) => s !== 200).length} | fallback fetches ${fb} | first answer per pod ${fmt(r.firstMs)} ms | last ${fmt(r.lastMs)} ms`);
      expect(r.bodies).toEqual([]);
      expect(r.statuses).toHaveLength(PODS * PER_POD);
      if (calls !== 1) console.log(fleet.map((p) => p.lines.filter((l) => /token\.|store\.|lock\./.test(l)).slice(-10).join('\n')).join('\n---\n'));
      expect(calls).toBe(1);
      expect(fb).toBe(0);
    });
  }

  it(`round trip 160 ms, ${STEADY_LIFETIME_S} s tokens, steady traffic over 5 lifetimes: at most lifetimes + 2 token calls`, async () => {
    relay.setDelay(80);
    await storeOkEverywhere();
    const rttMs = await pingMs();
    idp.setBehavior({ kind: 'token', expiresIn: STEADY_LIFETIME_S });
    // A "lifetime" as the fleet lives it: refresh-ahead replaces a token once (1 − 1.5 × refreshAhead) of its
    // lifetime has passed at the earliest (the jitter spans 1 to 1.5 × refreshAhead), so that is how often a pod on
    // its own could need a new one. Traffic for 5 of those: one token call each, plus the cold start, plus one
    // that may be in flight when the traffic stops.
    const lifetimeMs = STEADY_LIFETIME_S * 1000 * (1 - 1.5 * STEADY_REFRESH_AHEAD);
    const lifetimes = 5;
    const before = tokenCalls('steady');
    const statuses = new Map<number, number>();
    let stop = false;
    const t0 = performance.now();
    const load = Promise.all(
      fleet.flatMap((pod) =>
        Array.from({ length: 2 }, async () => {
          while (!stop) {
            const { status } = await get(pod, 'steady');
            statuses.set(status, (statuses.get(status) ?? 0) + 1);
            await sleep(25);
          }
        }),
      ),
    );
    await sleep(lifetimes * lifetimeMs);
    stop = true;
    const calls = tokenCalls('steady') - before;
    await load;
    const elapsedMs = performance.now() - t0;
    const total = [...statuses.values()].reduce((a, b) => a + b, 0);
    const non200 = total - (statuses.get(200) ?? 0);
    const fb = (await fallbacks('steady')).reduce((a, b) => a + b, 0);
    report(`RTT 160 ms (PING ${rttMs.toFixed(0)} ms) | steady ${(elapsedMs / 1000).toFixed(1)} s, ${STEADY_LIFETIME_S} s tokens, refreshAhead ${STEADY_REFRESH_AHEAD * 100}% (${lifetimes} lifetimes of ${(lifetimeMs / 1000).toFixed(2)} s) | token calls ${calls} (bound ${lifetimes + 2}) | requests ${total}, non-200 ${non200} | fallback fetches ${fb}`);
    expect(total).toBeGreaterThan(100);
    expect(non200).toBe(0);
    expect(calls).toBeLessThanOrEqual(lifetimes + 2);
    expect(fb).toBe(0);
  });

  it('Redis frozen past the deadline: each pod serves within 2 s on its own fetch (reason timeout); thawed, the fleet shares one token again', async () => {
    // No added latency: what is measured is the deadline, not the relay.
    relay.setDelay(0);
    await storeOkEverywhere();
    const before = tokenCalls('frozen');
    redis.freeze();
    let r: Awaited<ReturnType<typeof burst>>;
    let calls: number;
    let timeouts: number[];
    let anyReason: number[];
    try {
      r = await burst('frozen');
      calls = tokenCalls('frozen') - before;
      timeouts = await fallbacks('frozen', 'timeout');
      anyReason = await fallbacks('frozen');
    } finally {
      redis.thaw();
    }
    report(`frozen Redis (RTT 0) | cold burst ${PODS}x${PER_POD} | token calls ${calls} | non-200 ${r.statuses.filter((s) => s !== 200).length} | fallback{reason=timeout} per pod ${timeouts.join('/')} | first answer per pod ${fmt(r.firstMs)} ms | last ${fmt(r.lastMs)} ms (deadline ${COORDINATION_TIMEOUT_MS} ms, IdP ${IDP_DELAY_MS} ms)`);
    expect(r.bodies).toEqual([]);
    expect(Math.max(...r.lastMs)).toBeLessThan(2_000);
    expect(calls).toBeGreaterThanOrEqual(1);
    expect(calls).toBeLessThanOrEqual(PODS);
    // Soft: the counter is new in the fix; the convergence below is worth seeing either way.
    for (const n of timeouts) expect.soft(n, 'fallback fetches with reason timeout, per pod').toBeGreaterThanOrEqual(1);
    expect.soft(anyReason.reduce((a, b) => a + b, 0), 'fallback fetches (all reasons) = token calls').toBe(calls);

    // Thawed: one forced refresh on one pod reaches every pod through the store, and all inject the same token.
    await storeOkEverywhere();
    const t0 = performance.now();
    const forced = await request(`${fleet[0]?.adminUrl}/v1/routes/frozen/refresh`, { method: 'POST', dispatcher: agent });
    const forcedBody = (await forced.body.json()) as { fingerprint?: string };
    expect(forced.statusCode).toBe(200);
    let seen: string[] = [];
    // One pod at a time, so the vendor's next request is that pod's.
    await waitUntil(
      async () => {
        seen = [];
        for (const pod of fleet) {
          const n = vendor.count;
          const res = await get(pod, 'frozen');
          if (res.status !== 200) return false;
          seen.push(fingerprintOf((vendor.requests[n]?.authorization ?? '').slice(7)));
        }
        return new Set(seen).size === 1 && seen[0] === forcedBody.fingerprint;
      },
      8_000,
      100,
      'every pod to inject the refreshed token',
    );
    const convergedMs = performance.now() - t0;
    const callsAfter = tokenCalls('frozen') - before;
    report(`after thaw | forced refresh on one pod -> all ${PODS} pods inject ${seen[0]} within ${convergedMs.toFixed(0)} ms | token calls for the route ${callsAfter} (${calls} while frozen + the forced one)`);
    expect(callsAfter).toBe(calls + 1);
  });

  it('Redis killed: each pod fetches for itself at once, no waiting for a deadline (reason down)', async () => {
    relay.setDelay(0);
    await storeOkEverywhere();
    await redis.kill('SIGKILL');
    // Every pod has seen its connection go (the relay passes the close on): the store is down, not late.
    await waitUntil(async () => (await Promise.all(fleet.map(readyStore))).every((s) => s !== 'ok'), 5_000, 20, 'every pod to see the store down');
    const before = tokenCalls('dead');
    const r = await burst('dead');
    const calls = tokenCalls('dead') - before;
    const downs = await fallbacks('dead', 'down');
    report(`killed Redis | cold burst ${PODS}x${PER_POD} | token calls ${calls} | non-200 ${r.statuses.filter((s) => s !== 200).length} | fallback{reason=down} per pod ${downs.join('/')} | first answer per pod ${fmt(r.firstMs)} ms | last ${fmt(r.lastMs)} ms (IdP ${IDP_DELAY_MS} ms)`);
    expect(r.bodies).toEqual([]);
    // The IdP's 300 ms plus the proxying; far from the 1 s a late store is waited for.
    expect(Math.max(...r.firstMs)).toBeLessThan(800);
    expect(calls).toBe(PODS);
    for (const n of downs) expect.soft(n, 'fallback fetches with reason down, per pod').toBe(1);
  });
});

describe('a fleet of 4 on a slow Redis Cluster (a relay in front of every master)', () => {
  let cluster: RedisCluster;
  let relays: LatencyRelay[] = [];
  let pods: SidecarProcess[] = [];
  let clusterIdp: FakeIdp;
  let clusterVendor: EchoVendor;

  beforeAll(async () => {
    [cluster, clusterIdp, clusterVendor] = await Promise.all([
      startCluster(),
      startFakeIdp({ clients: { fleet: 'fleet-secret' }, defaultExpiresInS: 600 }),
      startEchoVendor(),
    ]);
    clusterIdp.setDelay(IDP_DELAY_MS);
    relays = await Promise.all(cluster.servers.map((s) => startLatencyRelay({ host: s.host, port: s.port, delayMs: 80 })));
    // Each master announces its relay, so the slot map the client learns (and its MOVED answers) lead through the
    // relays too; the cluster bus between the masters stays direct.
    await Promise.all(cluster.servers.map((s, i) => s.command('CONFIG', 'SET', 'cluster-announce-port', String(relays[i]?.port))));
    const relayPorts = new Set(relays.map((r) => r.port));
    await waitUntil(
      async () =>
        (await Promise.all(cluster.servers.map((s) => s.command('CLUSTER', 'SLOTS')))).every((slots) =>
          (slots as [number, number, [string, number]][]).every(([, , [, port]]) => relayPorts.has(port)),
        ),
      10_000,
      50,
      'every master to hand out the relays in its slot map',
    );
    const config = await writeConfig(`
version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
store:
  type: redis
  redis:
    cluster: [${relays.map((r) => `{ host: 127.0.0.1, port: ${r.port} }`).join(', ')}]
    keyPrefix: "sc${randomBytes(4).toString('hex')}:"
routes:
  - name: cluster-160
    match: { pathPrefix: /cluster-160 }
    upstream: ${clusterVendor.url}/v2
    auth:
      type: oauth2
      tokenUrl: ${clusterIdp.url}
      clientId: fleet
      clientSecret: fleet-secret
      scopes: [cluster-160]
`);
    pods = await Promise.all(Array.from({ length: PODS }, () => startSidecarProcess(config)));
    await waitUntil(async () => (await Promise.all(pods.map(readyStore))).every((s) => s === 'ok'), 15_000, 50, 'every pod to report the store ok');
  });

  afterAll(async () => {
    await Promise.all(pods.map((p) => p.kill('SIGKILL')));
    await Promise.all([...relays.map((r) => r.close()), cluster.stop(), clusterIdp.close(), clusterVendor.close()]);
  });

  it('round trip 160 ms to every master: a cold burst on each of 4 pods makes exactly 1 token call', async () => {
    const r = await burst('cluster-160', pods);
    const calls = clusterIdp.requests.length;
    const fell = await Promise.all(pods.map((p) => counter(p, FALLBACKS, { route: 'cluster-160' })));
    report(`Cluster, 3 masters, RTT 160 ms | cold burst ${PODS}x${PER_POD} | token calls ${calls} | non-200 ${r.statuses.filter((s) => s !== 200).length} | fallback fetches ${fell.reduce((a, b) => a + b, 0)} | first answer per pod ${fmt(r.firstMs)} ms`);
    expect(r.bodies).toEqual([]);
    expect(calls).toBe(1);
    expect(fell).toEqual([0, 0, 0, 0]);
  });
});

