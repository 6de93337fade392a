/**
 * "One token per fleet" with DPoP needs the proof key shared: two sidecar processes on one real Redis with the same
 * key file share one DPoP-bound token (one token request); without a key file each process makes its own key, so each
 * gets its own token (one request per pod), and /v1/routes says which.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { EchoVendor } from '../../src/dev/echo-vendor.js';
import type { FakeIdp } from '../../src/dev/fake-idp.js';
import { fleetConfig, startFleetBackends } from '../helpers/fleet.js';
import type { RedisServer } from '../helpers/redis.js';
import { startSidecarProcess, type SidecarProcess } from '../helpers/sidecar-process.js';

let idp: FakeIdp;
let vendor: EchoVendor;
let redis: RedisServer;
let dir: string;
const pods: SidecarProcess[] = [];

beforeAll(async () => {
  ({ idp, vendor, redis } = await startFleetBackends(3_600));
  // The echo vendor checks Bearer tokens only; here it echoes the DPoP one for the test to compare.
  vendor.acceptToken = undefined;
  dir = await mkdtemp(path.join(os.tmpdir(), 'dpop-fleet-'));
});

afterEach(async () => {
  await Promise.all(pods.splice(0).map((p) => p.kill('SIGKILL')));
});

afterAll(async () => {
  await Promise.all([idp?.close(), vendor?.close(), redis?.stop(), rm(dir, { recursive: true, force: true })]);
});

async function fleet(dpop: string): Promise<SidecarProcess[]> {
  const file = await fleetConfig({ redisUrl: redis.url, vendorUrl: vendor.url, tokenUrl: idp.url, authExtra: `, dpop: ${dpop}` });
  const started = await Promise.all([startSidecarProcess(file), startSidecarProcess(file)]);
  pods.push(...started);
  return started;
}

async function use(pod: SidecarProcess): Promise<string> {
  const res = await request(`${pod.proxyUrl}/pix/quotes`);
  const body = (await res.body.json()) as { authorization?: string };
  expect(res.statusCode).toBe(200);
  return body.authorization ?? '';
}

async function dpopState(pod: SidecarProcess): Promise<{ jkt: string; shared: boolean; alg?: string }> {
  const res = await request(`${pod.adminUrl}/v1/routes`);
  const routes = ((await res.body.json()) as { routes: { oauth: { dpop: { jkt: string; shared: boolean } } }[] }).routes;
  return routes[0]?.oauth.dpop ?? { jkt: '', shared: false };
}

describe('DPoP across a fleet', () => {
  it('a key file shared by the pods: one token request, the same DPoP token on both', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const keyFile = path.join(dir, 'dpop.pem');
    await writeFile(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const before = idp.calls;
    const [a, b] = await fleet(`{ key: { fromFile: ${keyFile} } }`);
    if (!a || !b) throw new Error('no pods');
    const first = await use(a);
    const second = await use(b);
    expect(first).toMatch(/^DPoP \S+$/);
    expect(second).toBe(first);
    expect(idp.calls - before).toBe(1);
    const [sa, sb] = await Promise.all([dpopState(a), dpopState(b)]);
    expect(sa).toMatchObject({ jkt: sb.jkt, shared: true, alg: 'ES256' });
  });

  it('no key file: each pod its own key, so its own token (one request per pod), and /v1/routes says shared: false', async () => {
    const before = idp.calls;
    const [a, b] = await fleet('{}');
    if (!a || !b) throw new Error('no pods');
    const first = await use(a);
    const second = await use(b);
    expect(first).toMatch(/^DPoP \S+$/);
    expect(second).not.toBe(first);
    expect(idp.calls - before).toBe(2);
    const [sa, sb] = await Promise.all([dpopState(a), dpopState(b)]);
    expect([sa.shared, sb.shared]).toEqual([false, false]);
    expect(sa.jkt).not.toBe(sb.jkt);
  });
});
