/**
 * The backends of a fleet test (a fake IdP, an echo vendor that accepts only the IdP's valid tokens, a real
 * redis-server on a free port) and the routes.yaml its sidecar processes share.
 */
import { randomBytes } from 'node:crypto';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { startRedis, type RedisServer } from './redis.js';
import { writeConfig } from './sidecar-process.js';

export const FLEET_CLIENT_ID = 'fleet-client';
export const FLEET_SECRET = 'fleet-secret-1234';

export interface FleetBackends {
  idp: FakeIdp;
  vendor: EchoVendor;
  redis: RedisServer;
}

export async function startFleetBackends(tokenLifetimeS: number): Promise<FleetBackends> {
  const [idp, vendor, redis] = await Promise.all([
    startFakeIdp({ clients: { [FLEET_CLIENT_ID]: FLEET_SECRET }, defaultExpiresInS: tokenLifetimeS }),
    startEchoVendor(),
    startRedis(),
  ]);
  vendor.acceptToken = (t) => idp.isValid(t);
  return { idp, vendor, redis };
}

/** Route `pix` (/pix → vendor/v2) on the Redis store under a fresh key prefix; `authExtra` goes into the auth map. */
export function fleetConfig(o: { redisUrl: string; vendorUrl: string; tokenUrl: string; authExtra?: string }): Promise<string> {
  return writeConfig(`version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
store:
  type: redis
  redis: { url: ${o.redisUrl}, keyPrefix: "fleet${randomBytes(3).toString('hex')}:" }
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: ${o.vendorUrl}/v2
    auth: { type: oauth2, tokenUrl: ${o.tokenUrl}, clientId: ${FLEET_CLIENT_ID}, clientSecret: ${FLEET_SECRET}${o.authExtra ?? ''} }
`);
}
