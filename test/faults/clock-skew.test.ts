/**
 * Pods whose wall clocks disagree (NTP drift, a paused VM): two sidecar processes on one real Redis, one with its
 * clock 2.5 s behind, the other 2.5 s ahead, under a steady load for 8 token lifetimes. The app must never see a
 * failure, and the token calls must stay near one per refresh for the fleet. The vendor's view is reported: an
 * expired token it refuses is replayed by the sidecar with a fresh one.
 */
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { EchoVendor } from '../../src/dev/echo-vendor.js';
import type { FakeIdp } from '../../src/dev/fake-idp.js';
import { fleetConfig, startFleetBackends } from '../helpers/fleet.js';
import type { RedisServer } from '../helpers/redis.js';
import { startSidecarProcess, type SidecarProcess } from '../helpers/sidecar-process.js';

const SKEW = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'clock-skew.mjs');
const LIFETIME_S = 5;
const SKEW_MS = 2_500;
let idp: FakeIdp;
let vendor: EchoVendor;
let redis: RedisServer;
const pods: SidecarProcess[] = [];
const agent = new Agent({ connections: 8 });

beforeAll(async () => {
  ({ idp, vendor, redis } = await startFleetBackends(LIFETIME_S));
  const file = await fleetConfig({ redisUrl: redis.url, vendorUrl: vendor.url, tokenUrl: idp.url });
  const skewed = (ms: number) => ({ NODE_OPTIONS: `--import=${SKEW}`, TEST_CLOCK_SKEW_MS: String(ms) });
  pods.push(...(await Promise.all([startSidecarProcess(file, skewed(-SKEW_MS)), startSidecarProcess(file, skewed(SKEW_MS))])));
}, 60_000);

afterAll(async () => {
  await Promise.all([...pods.map((p) => p.kill('SIGKILL')), idp?.close(), vendor?.close(), redis?.stop(), agent.close()]);
});

it(`one pod ${SKEW_MS} ms behind, one ahead, for 8 lifetimes: no failed request, token calls near one per refresh`, async () => {
  // The skew is in effect: the two pods' log clocks (pino's `time` is Date.now) disagree by about 2 × SKEW_MS.
  const [behind, ahead] = pods.map((p) => Date.parse((JSON.parse(p.lines.find((l) => l.includes('"event":"listening"')) ?? '{}') as { time?: string }).time ?? ''));
  expect(Math.abs((ahead ?? 0) - (behind ?? 0) - 2 * SKEW_MS)).toBeLessThan(1_500);
  const statuses: number[] = [];
  let running = true;
  const client = async (pod: SidecarProcess) => {
    while (running) {
      const res = await request(`${pod.proxyUrl}/pix/x`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' }, dispatcher: agent });
      await res.body.dump();
      statuses.push(res.statusCode);
      await sleep(25);
    }
  };
  const clients = pods.flatMap((p) => [client(p), client(p)]);
  const startedMs = Date.now();
  await sleep(8 * LIFETIME_S * 1000);
  running = false;
  await Promise.all(clients);
  const elapsedS = (Date.now() - startedMs) / 1000;
  const refused = vendor.requests.filter((r) => r.authorization !== undefined).length - statuses.length;
  const counts = statuses.reduce<Record<number, number>>((acc, s) => ({ ...acc, [s]: (acc[s] ?? 0) + 1 }), {});
  console.log(`clock skew ±${SKEW_MS} ms: ${statuses.length} requests ${JSON.stringify(counts)}, ${idp.calls} token calls in ${elapsedS.toFixed(1)} s, ${refused} vendor refusals replayed`);
  expect(counts).toEqual({ 200: statuses.length });
  // A refresh per lifetime (each at 70–80 % of it) plus the first fetch, and the skewed pods' extra ones: bounded.
  expect(idp.calls).toBeLessThanOrEqual(2 * Math.ceil(elapsedS / (LIFETIME_S * 0.7)) + 1);
}, 90_000);
