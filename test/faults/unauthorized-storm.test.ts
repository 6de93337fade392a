/**
 * A 401 storm: the vendor stops accepting the fleet's token (revoked at the IdP) while 500 requests are in flight on
 * two sidecar processes sharing a real Redis. Exactly one token request fleet-wide, and every replayable request
 * (a POST with a small body) ends 200 after its one replay.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readdirSync, readFileSync } from 'node:fs';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { FLEET_CLIENT_ID, FLEET_SECRET, fleetConfig } from '../helpers/fleet.js';
import { startSidecarProcess, type SidecarProcess } from '../helpers/sidecar-process.js';
import { waitUntil } from '../helpers/wait.js';

const IN_FLIGHT_PER_POD = 250;
let idp: FakeIdp;
/**
 * A vendor that holds the storm at a barrier: requests with the fleet's current token wait until all of them have
 * arrived, then the token is revoked and every one of them is answered 401 at once; any later request is answered by
 * the token's validity. So all 500 are in flight when their token dies.
 */
interface StormVendor {
  url: string;
  requests: number;
  /** Arm the barrier for `n` requests; resolves once they were all refused. */
  arm(n: number, onFull: () => void): Promise<void>;
  close(): Promise<void>;
}

async function startStormVendor(isValid: (token: string) => boolean): Promise<StormVendor> {
  let barrier: { n: number; held: ServerResponse[]; onFull: () => void; done: () => void } | undefined;
  const answer = (res: ServerResponse, ok: boolean) => {
    res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json', ...(ok ? {} : { 'www-authenticate': 'Bearer error="invalid_token"' }) });
    res.end(JSON.stringify({ ok }));
  };
  const v = {
    url: '',
    requests: 0,
    arm: (n: number, onFull: () => void) => new Promise<void>((done) => (barrier = { n, held: [], onFull, done })),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    v.requests++;
    req.resume();
    req.on('end', () => {
      const token = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
      const b = barrier;
      if (!b || !isValid(token)) return answer(res, isValid(token));
      b.held.push(res);
      if (b.held.length < b.n) return;
      barrier = undefined;
      b.onFull();
      for (const r of b.held) answer(r, false);
      b.done();
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  v.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return v;
}

let vendor: StormVendor;
let redis: RedisServer;
const pods: SidecarProcess[] = [];
const agent = new Agent({ connections: IN_FLIGHT_PER_POD + 10, keepAliveTimeout: 10_000 });

beforeAll(async () => {
  [idp, vendor, redis] = await Promise.all([
    startFakeIdp({ clients: { [FLEET_CLIENT_ID]: FLEET_SECRET }, defaultExpiresInS: 600 }),
    startStormVendor((t) => idp.isValid(t)),
    startRedis(),
  ]);
  const file = await fleetConfig({ redisUrl: redis.url, vendorUrl: vendor.url, tokenUrl: idp.url });
  pods.push(...(await Promise.all([startSidecarProcess(file), startSidecarProcess(file)])));
}, 60_000);

afterAll(async () => {
  await Promise.all([...pods.map((p) => p.kill('SIGKILL')), idp?.close(), vendor?.close(), redis?.stop(), agent.close().catch(() => undefined)]);
});

/** Resident memory (MB) and open file descriptors of a pod's process, from /proc. */
function resources(pod: SidecarProcess): { rssMb: number; fds: number } {
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pod.pid}/status`, 'utf8'))?.[1] ?? NaN);
  return { rssMb: Math.round(rssKb / 1024), fds: readdirSync(`/proc/${pod.pid}/fd`).length };
}

async function post(pod: SidecarProcess, i: number): Promise<number> {
  const res = await request(`${pod.proxyUrl}/pix/payments`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ i, amount: 100 }),
    dispatcher: agent,
  });
  await res.body.dump();
  return res.statusCode;
}

it('500 requests in flight meet a revoked token: one token request fleet-wide, every request 200 after one replay', async () => {
  // Both pods hold the fleet's one token.
  for (const pod of pods) expect(await post(pod, -1)).toBe(200);
  expect(idp.calls).toBe(1);
  const seenBefore = vendor.requests;
  const before = pods.map(resources);

  // Every request reaches the vendor with the old token before it is revoked, then all are refused together.
  const refused = vendor.arm(2 * IN_FLIGHT_PER_POD, () => idp.revokeAll());
  const statuses = await Promise.all(pods.flatMap((pod) => Array.from({ length: IN_FLIGHT_PER_POD }, (_, i) => post(pod, i))));
  await refused;

  const counts = statuses.reduce<Record<number, number>>((acc, s) => ({ ...acc, [s]: (acc[s] ?? 0) + 1 }), {});
  expect(counts).toEqual({ 200: 2 * IN_FLIGHT_PER_POD });
  expect(idp.calls, 'token requests: the warm one and exactly one refresh').toBe(2);
  // Each request reached the vendor exactly twice: its 401 and its one replay.
  const atVendor = vendor.requests - seenBefore;
  expect(atVendor).toBe(4 * IN_FLIGHT_PER_POD);
  // The fleet says so: one 401-forced refresh, many replays, on both pods together.
  const refreshed = pods.flatMap((p) => p.lines).filter((l) => l.includes('"event":"token.fetched"') || l.includes('"event":"token.refreshed"'));
  expect(refreshed.length).toBeLessThanOrEqual(2);

  // Resources: right after, each pod holds the storm's sockets (app side and its upstream keep-alive pool); once the
  // app's connections close and the vendor's keep-alive (Node's 5 s) ends, descriptors are back where they were.
  const peak = pods.map(resources);
  await agent.close();
  const stormEndMs = Date.now();
  const after = await waitUntil(
    () => {
      const now = pods.map(resources);
      return now.every((a, i) => a.fds <= (before[i]?.fds ?? 0) + 10) ? now : undefined;
    },
    15_000,
    100,
    'descriptors back to where they were',
  );
  console.log(`401 storm: ${atVendor} vendor requests for ${2 * IN_FLIGHT_PER_POD}; per pod before ${JSON.stringify(before)}, at the end ${JSON.stringify(peak)}, ${Date.now() - stormEndMs} ms later ${JSON.stringify(after)}`);
  after.forEach((a, i) => expect(a.rssMb).toBeLessThan((before[i]?.rssMb ?? 0) + 64));
}, 60_000);
