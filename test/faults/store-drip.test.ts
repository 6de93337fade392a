/**
 * Redis that answers, but a trickle at a time (a saturated link, a swapping host): every byte between the pods and
 * Redis crosses a relay that lets through 8 bytes every 40 ms, so a sealed token read takes seconds, well past the
 * 1 s call deadline. Under a steady load on two sidecar processes, over 8 token lifetimes, drip in the middle three.
 * The promise: no request fails, token calls stay bounded (each pod at most once per refresh while the store is
 * useless), and the fleet is back to one call per refresh once the drip stops.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startLatencyRelay, type LatencyRelay } from '../../src/dev/latency-relay.js';
import type { EchoVendor } from '../../src/dev/echo-vendor.js';
import type { FakeIdp } from '../../src/dev/fake-idp.js';
import { fleetConfig, startFleetBackends } from '../helpers/fleet.js';
import type { RedisServer } from '../helpers/redis.js';
import { startSidecarProcess, type SidecarProcess } from '../helpers/sidecar-process.js';

const LIFETIME_S = 3;
const LIFETIME_MS = LIFETIME_S * 1000;
let idp: FakeIdp;
let vendor: EchoVendor;
let redis: RedisServer;
let relay: LatencyRelay;
const pods: SidecarProcess[] = [];
const agent = new Agent({ connections: 8 });

beforeAll(async () => {
  ({ idp, vendor, redis } = await startFleetBackends(LIFETIME_S));
  relay = await startLatencyRelay({ host: redis.host, port: redis.port, delayMs: 0 });
  const file = await fleetConfig({ redisUrl: relay.via(redis.url), vendorUrl: vendor.url, tokenUrl: idp.url });
  pods.push(...(await Promise.all([startSidecarProcess(file), startSidecarProcess(file)])));
}, 60_000);

afterAll(async () => {
  await Promise.all([...pods.map((p) => p.kill('SIGKILL')), idp?.close(), vendor?.close(), relay?.close(), redis?.stop(), agent.close()]);
});

it('Redis on a slow drip for 3 lifetimes under steady load: no failed request, token calls bounded, one per refresh after', async () => {
  const results: { atMs: number; status: number; ms: number }[] = [];
  let running = true;
  const client = async (pod: SidecarProcess) => {
    while (running) {
      const t0 = performance.now();
      const res = await request(`${pod.proxyUrl}/pix/x`, { dispatcher: agent });
      await res.body.dump();
      results.push({ atMs: Date.now(), status: res.statusCode, ms: performance.now() - t0 });
      await sleep(25);
    }
  };
  const clients = pods.flatMap((p) => [client(p), client(p)]);
  const phases: { name: string; calls: number; atMs: number }[] = [];
  const mark = (name: string) => phases.push({ name, calls: idp.calls, atMs: Date.now() });
  await sleep(2 * LIFETIME_MS);
  mark('dripping');
  relay.setDrip({ bytes: 8, everyMs: 40 });
  await sleep(3 * LIFETIME_MS);
  relay.setDrip(undefined);
  mark('flowing');
  // Connections that queued seconds of trickled bytes drain, or are cut by their deadlines and reconnect: a lifetime.
  await sleep(LIFETIME_MS);
  mark('settled');
  await sleep(2 * LIFETIME_MS);
  running = false;
  await Promise.all(clients);
  mark('end');

  const failed = results.filter((r) => r.status !== 200);
  const during = (from: string, to: string) => {
    const a = phases.find((p) => p.name === from);
    const b = phases.find((p) => p.name === to);
    return { calls: (b?.calls ?? 0) - (a?.calls ?? 0), lat: results.filter((r) => r.atMs >= (a?.atMs ?? 0) && r.atMs < (b?.atMs ?? 0)).map((r) => r.ms).sort((x, y) => x - y) };
  };
  const drip = during('dripping', 'flowing');
  const after = during('settled', 'end');
  const p99 = (xs: number[]) => xs[Math.floor(xs.length * 0.99)] ?? NaN;
  console.log(
    `store drip: ${results.length} requests, ${failed.length} failed, ${idp.calls} token calls; ` +
      `dripping: ${drip.calls} calls, p99 ${p99(drip.lat).toFixed(1)} ms, max ${Math.max(...drip.lat).toFixed(0)} ms; ` +
      `after: ${after.calls} calls, p99 ${p99(after.lat).toFixed(1)} ms`,
  );
  expect(failed).toEqual([]);
  // 3 lifetimes of drip, a refresh every 0.7–0.8 of one: at most ⌈3 / 0.7⌉ + 1 refreshes, each pod on its own.
  expect(drip.calls).toBeLessThanOrEqual(2 * (Math.ceil(3 / 0.7) + 1));
  // Two lifetimes after it settled: the fleet coordinates again, one call per refresh (not one per pod).
  expect(after.calls).toBeLessThanOrEqual(Math.ceil(2 / 0.7) + 1);
  expect(after.calls).toBeGreaterThanOrEqual(1);
}, 90_000);
