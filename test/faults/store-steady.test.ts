/**
 * Redis blackholed (SIGSTOP: the port stays open, nothing answers) and then killed and restarted, under a steady load
 * on two sidecar processes, over 10 token lifetimes. The promise: no request fails (correctness never depends on the
 * store), and token calls stay bounded: at most one per pod per refresh while the fleet cannot coordinate.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { EchoVendor } from '../../src/dev/echo-vendor.js';
import type { FakeIdp } from '../../src/dev/fake-idp.js';
import { fleetConfig, startFleetBackends } from '../helpers/fleet.js';
import type { RedisServer } from '../helpers/redis.js';
import { startSidecarProcess, type SidecarProcess } from '../helpers/sidecar-process.js';

const LIFETIME_S = 4;
const LIFETIME_MS = LIFETIME_S * 1000;
let idp: FakeIdp;
let vendor: EchoVendor;
let redis: RedisServer;
const pods: SidecarProcess[] = [];
const agent = new Agent({ connections: 8 });

beforeAll(async () => {
  ({ idp, vendor, redis } = await startFleetBackends(LIFETIME_S));
  const file = await fleetConfig({ redisUrl: redis.url, vendorUrl: vendor.url, tokenUrl: idp.url });
  pods.push(...(await Promise.all([startSidecarProcess(file), startSidecarProcess(file)])));
}, 60_000);

afterAll(async () => {
  redis?.thaw();
  await Promise.all([...pods.map((p) => p.kill('SIGKILL')), idp?.close(), vendor?.close(), redis?.stop(), agent.close()]);
});

it('Redis blackholed for 3 lifetimes, then killed and restarted, under steady load: no failed request, token calls bounded', async () => {
  const statuses: { atMs: number; status: number }[] = [];
  let running = true;
  const client = async (pod: SidecarProcess) => {
    while (running) {
      const res = await request(`${pod.proxyUrl}/pix/x`, { dispatcher: agent });
      await res.body.dump();
      statuses.push({ atMs: Date.now(), status: res.statusCode });
      await sleep(25);
    }
  };
  const clients = pods.flatMap((p) => [client(p), client(p)]);
  const phases: [string, number][] = [];
  const mark = (name: string) => phases.push([name, idp.calls]);
  await sleep(2 * LIFETIME_MS);
  mark('frozen');
  redis.freeze();
  await sleep(3 * LIFETIME_MS);
  redis.thaw();
  mark('thawed');
  await sleep(2 * LIFETIME_MS);
  mark('killed');
  await redis.kill('SIGKILL');
  await sleep(LIFETIME_MS);
  redis = await redis.restart();
  mark('restarted');
  await sleep(2 * LIFETIME_MS);
  running = false;
  await Promise.all(clients);
  mark('end');

  const failed = statuses.filter((s) => s.status !== 200);
  const calls = phases.map(([name, n], i) => `${name} ${n - (phases[i - 1]?.[1] ?? 0)}`).join(', ');
  console.log(`store faults: ${statuses.length} requests, ${failed.length} failed, ${idp.calls} token calls (by phase end: ${calls})`);
  expect(failed).toEqual([]);
  // 10 lifetimes, a refresh every 0.7–0.8 of one: ~13 refreshes; while the fleet cannot coordinate (frozen 3, down 1
  // lifetime, and reconnecting after), each pod refreshes for itself: at most two calls per refresh, plus the cold one.
  expect(idp.calls).toBeLessThanOrEqual(2 * Math.ceil(10 / 0.7) + 1);
}, 90_000);
