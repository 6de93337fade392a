/**
 * A rotated private_key_jwt key file (a Secret volume update: a new file renamed over the old) is picked up like a
 * rotated secret: the config reloads, the key's thumbprint starts a new token identity, and the next assertion is
 * signed with the new key, which the token endpoint verifies with jose.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { calculateJwkThumbprint, importSPKI, jwtVerify, type JWK } from 'jose';
import { request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startSidecarProcess, writeConfig, type SidecarProcess } from '../helpers/sidecar-process.js';
import { waitUntil } from '../helpers/wait.js';

interface Key {
  privatePem: string;
  publicPem: string;
  jwk: JWK;
}

function ecKey(): Key {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicPem = publicKey.export({ format: 'pem', type: 'spki' }).toString();
  return { privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), publicPem, jwk: publicKey.export({ format: 'jwk' }) as JWK };
}

let dir: string;
let endpoint: Server;
let tokenUrl: string;
let pod: SidecarProcess | undefined;
const keys = [ecKey(), ecKey()];
/** Which key verified each assertion (index into `keys`), in order. */
const verifiedWith: number[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'key-rotation-'));
  const publicKeys = await Promise.all(keys.map((k) => importSPKI(k.publicPem, 'ES256')));
  endpoint = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      void (async () => {
        const assertion = new URLSearchParams(body).get('client_assertion') ?? '';
        for (const [i, key] of publicKeys.entries()) {
          try {
            await jwtVerify(assertion, key, { issuer: 'rot-client', subject: 'rot-client', audience: tokenUrl });
            verifiedWith.push(i);
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ access_token: `at-${verifiedWith.length}-${i}`, token_type: 'Bearer', expires_in: 600 }));
            return;
          } catch {
            // try the next key
          }
        }
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: 'invalid_client' }));
      })();
    });
  });
  await new Promise<void>((resolve) => endpoint.listen(0, '127.0.0.1', () => resolve()));
  tokenUrl = `http://127.0.0.1:${(endpoint.address() as AddressInfo).port}/token`;
});

afterAll(async () => {
  await pod?.kill('SIGKILL');
  await new Promise<void>((resolve) => endpoint.close(() => resolve()));
  await rm(dir, { recursive: true, force: true });
});

async function adminJson(method: 'GET' | 'POST', p: string): Promise<Record<string, unknown>> {
  const res = await request(`${pod?.adminUrl}${p}`, { method });
  return (await res.body.json()) as Record<string, unknown>;
}

it('a key file replaced on disk signs the next assertion, and the token identity changes with its thumbprint', async () => {
  const keyFile = path.join(dir, 'client-key.pem');
  await writeFile(keyFile, keys[0]?.privatePem ?? '');
  const file = await writeConfig(`version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: rot
    match: { pathPrefix: /rot }
    upstream: http://127.0.0.1:9/v2
    warm: true
    auth: { type: oauth2, tokenUrl: ${tokenUrl}, clientId: rot-client, clientAuth: private_key_jwt, privateKey: { fromFile: ${keyFile} } }
`);
  pod = await startSidecarProcess(file);
  await waitUntil(() => verifiedWith.length === 1, 5_000, 50, 'the warm token');
  const thumbprintOf = async (): Promise<unknown> => {
    const routes = (await adminJson('GET', '/v1/routes'))['routes'] as { oauth: { clientAssertion: { thumbprint: string } } }[];
    return routes[0]?.oauth.clientAssertion.thumbprint;
  };
  expect(await thumbprintOf()).toBe(await calculateJwkThumbprint(keys[0]?.jwk ?? {}));

  // As the kubelet does: a new file, renamed over the old one.
  await writeFile(`${keyFile}.tmp`, keys[1]?.privatePem ?? '');
  await rename(`${keyFile}.tmp`, keyFile);
  await waitUntil(() => pod?.lines.some((l) => l.includes('"event":"config.reloaded"')), 5_000, 50, 'the reload');
  expect(await thumbprintOf()).toBe(await calculateJwkThumbprint(keys[1]?.jwk ?? {}));
  // A new identity: the warm route fetches its token again, with an assertion only the new key verifies.
  await waitUntil(() => verifiedWith.length === 2, 5_000, 50, 'a token for the new key');
  expect(verifiedWith).toEqual([0, 1]);
  expect(pod.lines.join('\n')).not.toContain('BEGIN PRIVATE KEY');
}, 30_000);
