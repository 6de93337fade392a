/**
 * The sidecar against a real OAuth server (oidc-provider, OpenID-certified) and a vendor that verifies everything it
 * receives with jose (test/helpers/vendor.ts): private_key_jwt with both audience styles, DPoP-bound tokens with
 * server nonces on both sides, and tls_client_auth with a certificate-bound token behind TLS.
 */
import { execFile } from 'node:child_process';
import { createPublicKey, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import { calculateJwkThumbprint } from 'jose';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfigText } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { Sidecar } from '../../src/sidecar.js';
import { makeCerts, type Certs } from '../helpers/certs.js';
import { generateTestKeyPair, startOidcProvider, type OidcProviderHandle, type TestKeyPair } from '../helpers/oidc.js';
import { startVendor, type VendorHandle } from '../helpers/vendor.js';
import { capturingDestination } from '../helpers/log-capture.js';

const RESOURCE = 'https://api.vendor.test';
type Json = Record<string, unknown>;

let dir: string;
const running: { close(): Promise<unknown> }[] = [];
const started: Started[] = [];

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'oauth-methods-'));
});

afterAll(async () => {
  // Every signed thing here (client assertions, DPoP proofs, the JWT access tokens) is a JWS, and every JWS starts
  // with base64url of `{"`: none may reach a log line or an admin answer.
  for (const s of started) {
    const routes = await call(`${s.admin}/v1/routes`);
    const metrics = await request(`${s.admin}/metrics`).then((r) => r.body.text());
    for (const text of [...s.lines, JSON.stringify(routes.body), metrics]) expect(text).not.toMatch(/eyJ[A-Za-z0-9_-]{8,}/);
  }
  expect(started.length).toBeGreaterThanOrEqual(5);
  await Promise.allSettled(running.map((r) => r.close()));
  await rm(dir, { recursive: true, force: true });
});

async function file(name: string, content: string): Promise<string> {
  const p = path.join(dir, name);
  await writeFile(p, content);
  return p;
}

interface Started {
  sidecar: Sidecar;
  proxy: string;
  admin: string;
  lines: string[];
  warnings: string[];
}

async function startSidecar(routes: Json[]): Promise<Started> {
  const loaded = await loadConfigText(stringify({ version: 1, listen: '127.0.0.1:0', admin: '127.0.0.1:0', drainTimeout: '1s', routes }), { baseDir: dir });
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', destination: capturingDestination(lines) });
  const sidecar = await Sidecar.start({ config: loaded.config, log });
  running.push({ close: () => sidecar.stop(200) });
  const s = { sidecar, proxy: sidecar.proxyUrl, admin: sidecar.adminUrl, lines, warnings: loaded.warnings };
  started.push(s);
  return s;
}

async function call(url: string, init: { method?: string; body?: string } = {}): Promise<{ status: number; body: Json }> {
  const res = await request(url, { method: (init.method ?? 'GET') as 'GET', body: init.body, headers: init.body ? { 'content-type': 'application/json' } : {} });
  const text = await res.body.text();
  return { status: res.statusCode, body: text ? (JSON.parse(text) as Json) : {} };
}

const clientAssertions = (op: OidcProviderHandle) => op.requests.filter((r) => r.clientAssertion).map((r) => r.clientAssertion?.payload as Json);

describe('private_key_jwt against oidc-provider (RFC 7523 §2.2)', () => {
  let op: OidcProviderHandle;
  let vendor: VendorHandle;
  let ec: TestKeyPair;
  let ed: TestKeyPair;

  beforeAll(async () => {
    [ec, ed] = await Promise.all([generateTestKeyPair('ES256'), generateTestKeyPair('EdDSA')]);
    op = await startOidcProvider({
      clients: [
        { clientId: 'pkjwt-token-url', method: 'private_key_jwt', jwks: { keys: [{ ...ec.publicJwk, kid: 'ec-1' }] } },
        { clientId: 'pkjwt-issuer', method: 'private_key_jwt', jwks: { keys: [{ ...ed.publicJwk, kid: 'ed-1' }] } },
      ],
    });
    vendor = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE });
    running.push(op, vendor);
  });

  it('aud = the token URL (the default): the vendor accepts the token; every assertion is fresh and short-lived', async () => {
    const keyFile = await file('ec.pem', ec.privateKeyPem);
    const s = await startSidecar([
      {
        name: 'pk',
        match: { pathPrefix: '/pk' },
        upstream: `${vendor.url}/v1`,
        auth: { type: 'oauth2', tokenUrl: op.tokenUrl, clientId: 'pkjwt-token-url', clientAuth: 'private_key_jwt', privateKey: { fromFile: keyFile }, keyId: 'ec-1', resource: RESOURCE },
      },
    ]);
    const first = await call(`${s.proxy}/pk/payments?x=1`);
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    expect(first.body).toMatchObject({ ok: true, scheme: 'Bearer', client_id: 'pkjwt-token-url', path: '/v1/payments' });
    // A second token (fleet-wide delete): a second assertion.
    expect((await call(`${s.admin}/v1/routes/pk/token`, { method: 'DELETE' })).status).toBe(200);
    expect((await call(`${s.proxy}/pk/payments`)).status).toBe(200);
    const assertions = clientAssertions(op).filter((p) => p['iss'] === 'pkjwt-token-url');
    expect(assertions).toHaveLength(2);
    for (const p of assertions) {
      expect(p).toMatchObject({ iss: 'pkjwt-token-url', sub: 'pkjwt-token-url', aud: op.tokenUrl });
      expect((p['exp'] as number) - (p['iat'] as number)).toBeLessThanOrEqual(60);
    }
    expect(new Set(assertions.map((p) => p['jti'])).size).toBe(2);
    expect(op.requests.filter((r) => r.clientId === 'pkjwt-token-url').map((r) => [r.status, r.authMethod])).toEqual([
      [200, 'private_key_jwt'],
      [200, 'private_key_jwt'],
    ]);
    const routes = await call(`${s.admin}/v1/routes`);
    const oauth = (routes.body['routes'] as Json[])[0]?.['oauth'] as Json;
    expect(oauth).toMatchObject({ clientAuth: 'private_key_jwt', grant: 'client_credentials', clientAssertion: { audience: op.tokenUrl, keyId: 'ec-1', alg: 'ES256' } });
    expect((oauth['clientAssertion'] as Json)['thumbprint']).toBe(await calculateJwkThumbprint(ec.publicJwk));
    expect(JSON.stringify(routes.body)).not.toContain(ec.privateJwk.d as string);
  });

  it('aud = the issuer (FAPI 2.0 style), Ed25519 key given as a JWK', async () => {
    const keyFile = await file('ed.jwk', JSON.stringify(ed.privateJwk));
    const s = await startSidecar([
      {
        name: 'fapi',
        match: { pathPrefix: '/fapi' },
        upstream: `${vendor.url}/v1`,
        auth: { type: 'oauth2', tokenUrl: op.tokenUrl, clientId: 'pkjwt-issuer', clientAuth: 'private_key_jwt', privateKey: { fromFile: keyFile }, assertionAudience: 'issuer', issuer: op.issuer, resource: RESOURCE },
      },
    ]);
    const res = await call(`${s.proxy}/fapi/accounts`);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const p = clientAssertions(op).find((a) => a['iss'] === 'pkjwt-issuer');
    expect(p).toMatchObject({ sub: 'pkjwt-issuer', aud: op.issuer });
    expect(typeof p?.['aud']).toBe('string');
    expect(op.requests.find((r) => r.clientId === 'pkjwt-issuer')?.clientAssertion?.header).toMatchObject({ alg: 'EdDSA' });
  });
});

describe('DPoP against oidc-provider with required nonces (RFC 9449)', () => {
  let op: OidcProviderHandle;
  let vendor: VendorHandle;
  let key: TestKeyPair;

  beforeAll(async () => {
    key = await generateTestKeyPair('ES256');
    op = await startOidcProvider({ dpopRequireNonce: true, clients: [{ clientId: 'dpop-client', method: 'client_secret_basic', secret: 'dpop-secret-1234', dpopBound: true }] });
    vendor = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE, requireDpopNonce: true });
    running.push(op, vendor);
  });

  it('a nonce retry on each side, then DPoP-bound requests with a fresh proof each (GET and POST)', async () => {
    const keyFile = await file('dpop.pem', key.privateKeyPem);
    const s = await startSidecar([
      {
        name: 'dp',
        match: { pathPrefix: '/dp' },
        upstream: `${vendor.url}/v2`,
        auth: { type: 'oauth2', tokenUrl: op.tokenUrl, clientId: 'dpop-client', clientSecret: 'dpop-secret-1234', resource: RESOURCE, dpop: { key: { fromFile: keyFile } } },
      },
    ]);
    const first = await call(`${s.proxy}/dp/quotes?since=1#x`);
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    expect(first.body).toMatchObject({ ok: true, scheme: 'DPoP', bound: 'jkt', path: '/v2/quotes' });
    // Token endpoint: 400 use_dpop_nonce, then 200 with the nonce; never a third try.
    expect(op.requests.map((r) => [r.status, r.error ?? null, r.hadDpopProof])).toEqual([
      [400, 'use_dpop_nonce', true],
      [200, null, true],
    ]);
    expect(op.requests[1]?.dpopJkt).toBe(await calculateJwkThumbprint(key.publicJwk));
    // Vendor: 401 asking for its nonce, then 200.
    expect(vendor.requests.map((r) => r.status)).toEqual([401, 200]);
    for (let i = 0; i < 5; i++) {
      const r = i % 2 ? await call(`${s.proxy}/dp/orders`, { method: 'POST', body: JSON.stringify({ i }) }) : await call(`${s.proxy}/dp/quotes`);
      expect(r.status, JSON.stringify(r.body)).toBe(200);
    }
    // The nonce is kept: no more challenges; every proof unique (the vendor refuses a replayed jti).
    expect(vendor.requests.map((r) => r.status)).toEqual([401, 200, 200, 200, 200, 200, 200]);
    expect(new Set(vendor.requests.map((r) => r.jti)).size).toBe(7);
    // The vendor rotates its nonce: one more challenge, answered once.
    vendor.rotateDpopNonce();
    expect((await call(`${s.proxy}/dp/quotes`)).status).toBe(200);
    expect(vendor.requests.slice(-2).map((r) => r.status)).toEqual([401, 200]);
    expect(op.requests).toHaveLength(2);
    const oauth = ((await call(`${s.admin}/v1/routes`)).body['routes'] as Json[])[0]?.['oauth'] as Json;
    expect(oauth['dpop']).toEqual({ jkt: await calculateJwkThumbprint(key.publicJwk), alg: 'ES256', shared: true });
  });

  it('a vendor that keeps asking for a nonce gets one retry, and the app its 401 (never a loop)', async () => {
    const stubborn = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE, requireDpopNonce: true });
    running.push(stubborn);
    const s = await startSidecar([
      {
        name: 'st',
        match: { pathPrefix: '/st' },
        upstream: `${stubborn.url}/v2`,
        retryOn401: false,
        auth: { type: 'oauth2', tokenUrl: op.tokenUrl, clientId: 'dpop-client', clientSecret: 'dpop-secret-1234', resource: RESOURCE, dpop: {} },
      },
    ]);
    // Rotate before every answer: each proof carries a nonce that is already stale.
    const before = stubborn.requests.length;
    const timer = setInterval(() => stubborn.rotateDpopNonce(), 1);
    try {
      const r = await call(`${s.proxy}/st/x`);
      expect([200, 401]).toContain(r.status);
      expect(stubborn.requests.length - before).toBeLessThanOrEqual(2);
    } finally {
      clearInterval(timer);
    }
    // No key configured: this process's own key, said so.
    const oauth = ((await call(`${s.admin}/v1/routes`)).body['routes'] as Json[])[0]?.['oauth'] as Json;
    expect(oauth['dpop']).toMatchObject({ alg: 'ES256', shared: false });
  });
});

describe('tls_client_auth with a certificate-bound token, behind TLS (RFC 8705)', () => {
  let certs: Certs;
  let op: OidcProviderHandle;
  let vendor: VendorHandle;

  beforeAll(async () => {
    certs = await makeCerts();
    op = await startOidcProvider({
      tls: { cert: certs.cert, key: certs.key, ca: certs.ca },
      clients: [{ clientId: 'mtls-client', method: 'tls_client_auth', subjectDn: 'CN=token-sidecar-test-client', certificateBound: true }],
    });
    vendor = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE, tls: { cert: certs.cert, key: certs.key, ca: certs.ca } });
    running.push(op, vendor);
  });

  it('the bound token works with the same certificate towards the vendor; validate warns when upstreamTls differs', async () => {
    const tls = { cert: { fromFile: certs.clientCertFile }, key: { fromFile: certs.clientKeyFile }, ca: { fromFile: certs.caFile } };
    const auth = { type: 'oauth2', tokenUrl: op.tokenUrl, clientId: 'mtls-client', clientAuth: 'tls_client_auth', tls, resource: RESOURCE };
    const s = await startSidecar([
      { name: 'pix', match: { pathPrefix: '/pix' }, upstream: `${vendor.url}/v2`, upstreamTls: tls, auth },
      { name: 'nocert', match: { pathPrefix: '/nocert' }, upstream: `${vendor.url}/v2`, upstreamTls: { ca: { fromFile: certs.caFile } }, auth },
    ]);
    const ok = await call(`${s.proxy}/pix/cob/42`);
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body).toMatchObject({ ok: true, scheme: 'Bearer', bound: 'x5t', client_id: 'mtls-client' });
    expect(op.requests.map((r) => [r.status, r.authMethod, r.hadClientCert])).toEqual([[200, 'tls_client_auth', true]]);
    // Same credential (the two routes share one token), no certificate towards the vendor: refused there.
    const refused = await call(`${s.proxy}/nocert/cob/42`);
    expect(refused.status).toBe(401);
    expect(op.requests.filter((r) => r.status === 200).length).toBeLessThanOrEqual(2);
    expect(s.warnings.some((w) => w.startsWith('routes[1].auth.tls.cert:') && w.includes('sends no client certificate'))).toBe(true);
    expect(s.warnings.some((w) => w.startsWith('routes[0]'))).toBe(false);
    const oauth = ((await call(`${s.admin}/v1/routes`)).body['routes'] as Json[])[0]?.['oauth'] as Json;
    expect(oauth['certificateThumbprint']).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });
});

describe('self_signed_tls_client_auth (RFC 8705 §2.2): a self-signed certificate registered by its key', () => {
  it('the token endpoint knows the client by the x5c in its JWKS; the token is bound to that certificate', async () => {
    const certs = await makeCerts();
    const cert = path.join(dir, 'self.crt');
    const key = path.join(dir, 'self.key');
    await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=self-signed-client']);
    const pem = await readFile(cert, 'utf8');
    const x509 = new X509Certificate(pem);
    const jwk = { ...(createPublicKey(pem).export({ format: 'jwk' }) as Record<string, string>), x5c: [x509.raw.toString('base64')] };
    const op = await startOidcProvider({
      tls: { cert: certs.cert, key: certs.key, ca: certs.ca },
      clients: [{ clientId: 'self-client', method: 'self_signed_tls_client_auth', jwks: { keys: [jwk] }, certificateBound: true }],
    });
    const vendor = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE, tls: { cert: certs.cert, key: certs.key, ca: certs.ca } });
    running.push(op, vendor);
    const tls = { cert: { fromFile: cert }, key: { fromFile: key }, ca: { fromFile: certs.caFile } };
    const s = await startSidecar([
      {
        name: 'self',
        match: { pathPrefix: '/self' },
        upstream: `${vendor.url}/v2`,
        upstreamTls: tls,
        auth: { type: 'oauth2', tokenUrl: op.tokenUrl, clientId: 'self-client', clientAuth: 'self_signed_tls_client_auth', tls, resource: RESOURCE },
      },
    ]);
    const res = await call(`${s.proxy}/self/cob/1`);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ ok: true, bound: 'x5t', client_id: 'self-client' });
    expect(op.requests.map((r) => [r.status, r.authMethod, r.hadClientCert])).toEqual([[200, 'self_signed_tls_client_auth', true]]);
    expect(s.warnings).toEqual([]);
  });
});
