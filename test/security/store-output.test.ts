/**
 * A least-privilege Redis ACL user (no INFO, no CONFIG, …) is what a security review asks for: the sidecar must work
 * with it and keep its output JSON only (ioredis' ready check used to print a plain-text warning on every connect).
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { request } from 'undici';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { startSidecarProcess, writeConfig, type SidecarProcess } from '../helpers/sidecar-process.js';

let redis: RedisServer;
let idp: FakeIdp;
let vendor: EchoVendor;
let pod: SidecarProcess | undefined;

beforeAll(async () => {
  [redis, idp, vendor] = await Promise.all([startRedis(), startFakeIdp({ clients: { app: 'app-secret' } }), startEchoVendor()]);
  // Only what the store uses: strings, scripts, pub/sub on its channel.
  await redis.command('ACL', 'SETUSER', 'sidecar', 'on', '>acl-pass', '~*', '&*', '-@all', '+get', '+set', '+mget', '+del', '+evalsha', '+eval', '+publish', '+subscribe', '+ping', '+auth', '+hello', '+client');
});
afterAll(async () => {
  await pod?.kill('SIGKILL');
  await Promise.all([redis.stop(), idp.close(), vendor.close()]);
});

it('a least-privilege ACL user: tokens are shared, and every output line is JSON', async () => {
  const prefix = `acl${randomBytes(3).toString('hex')}:`;
  const config = await writeConfig(`
version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
store:
  type: redis
  redis: { url: "redis://127.0.0.1:${redis.port}", username: sidecar, password: acl-pass, keyPrefix: "${prefix}" }
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: ${vendor.url}/v2
    auth: { type: oauth2, tokenUrl: ${idp.url}, clientId: app, clientSecret: app-secret }
`);
  pod = await startSidecarProcess(config);
  const res = await request(`${pod.proxyUrl}/pix/x`);
  expect(res.statusCode).toBe(200);
  await res.body.text();
  // The token went to the store through the ACL user (the fleet can share it).
  const keys = (await redis.command('KEYS', `${prefix}*`)) as string[];
  expect(keys.some((k) => k.endsWith(':token'))).toBe(true);
  await new Promise((r) => setTimeout(r, 200));
  for (const line of pod.lines) expect(() => JSON.parse(line) as unknown, line).not.toThrow();
  expect(pod.lines.some((l) => l.includes('"event":"store.connected"'))).toBe(true);
});
