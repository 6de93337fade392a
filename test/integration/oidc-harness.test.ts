/**
 * Proves the OAuth test harness (test/helpers/oidc.ts: a real oidc-provider; test/helpers/vendor.ts: a
 * vendor API that verifies tokens, DPoP proofs and certificate binding) with hand-made requests only:
 * undici + jose, no sidecar code.
 */
import { createHash, randomUUID, X509Certificate, type KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { calculateJwkThumbprint, decodeJwt, SignJWT, type JWK } from 'jose';
import { Agent, request, type Dispatcher } from 'undici';
import { makeCerts, type Certs } from '../helpers/certs.js';
import { generateTestKeyPair, startOidcProvider, type OidcProviderHandle, type TestKeyPair } from '../helpers/oidc.js';
import { startVendor, type VendorHandle } from '../helpers/vendor.js';

const RESOURCE = 'https://api.vendor.test';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

interface TokenAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
}

async function post(url: string, form: Record<string, string>, headers: Record<string, string> = {}, dispatcher?: Dispatcher): Promise<TokenAnswer> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', ...headers },
    body: new URLSearchParams(form).toString(),
    dispatcher,
  });
  return { status: res.statusCode, headers: res.headers, body: (await res.body.json()) as Record<string, unknown> };
}

async function get(url: string, headers: Record<string, string>, dispatcher?: Dispatcher): Promise<TokenAnswer> {
  const res = await request(url, { method: 'GET', headers, dispatcher });
  return { status: res.statusCode, headers: res.headers, body: (await res.body.json()) as Record<string, unknown> };
}

const basic = (id: string, secret: string) =>
  `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

function publicParts(jwk: JWK): JWK {
  const { kty, crv, x, y, n, e } = jwk;
  return Object.fromEntries(Object.entries({ kty, crv, x, y, n, e }).filter(([, v]) => v !== undefined)) as JWK;
}

async function dpopProof(
  key: TestKeyPair,
  htm: string,
  htu: string,
  extra: { nonce?: string; accessToken?: string } = {},
): Promise<string> {
  const claims: Record<string, unknown> = { htm, htu };
  if (extra.nonce !== undefined) claims.nonce = extra.nonce;
  if (extra.accessToken !== undefined) claims.ath = createHash('sha256').update(extra.accessToken).digest('base64url');
  return new SignJWT(claims)
    .setProtectedHeader({ typ: 'dpop+jwt', alg: key.alg, jwk: publicParts(key.publicJwk) })
    .setIssuedAt()
    .setJti(randomUUID())
    .sign(key.privateKey);
}

async function clientAssertion(clientId: string, key: { privateKey: KeyObject; kid: string }, aud: string | string[], jti = randomUUID()): Promise<string> {
  return new SignJWT({})
    .setProtectedHeader({ alg: 'ES256', kid: key.kid })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(aud)
    .setJti(jti)
    .setIssuedAt()
    .setExpirationTime('60s')
    .sign(key.privateKey);
}

describe('oidc-provider + verifying vendor harness (plain HTTP)', () => {
  let op: OidcProviderHandle;
  let vendor: VendorHandle;
  let jwtKey: TestKeyPair;
  let dpopKey: TestKeyPair;

  beforeAll(async () => {
    [jwtKey, dpopKey] = await Promise.all([generateTestKeyPair('ES256'), generateTestKeyPair('ES256')]);
    op = await startOidcProvider({
      dpopRequireNonce: true,
      clients: [
        { clientId: 'basic-client', method: 'client_secret_basic', secret: 'basic-secret-123', scopes: 'things:read things:write' },
        { clientId: 'jwt-client', method: 'private_key_jwt', jwks: { keys: [jwtKey.publicJwk] } },
        { clientId: 'dpop-client', method: 'client_secret_post', secret: 'dpop-secret-456', dpopBound: true },
      ],
    });
    vendor = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE });
  });

  afterAll(async () => {
    await Promise.all([op?.close(), vendor?.close()]);
  });

  it('client_secret_basic: JWT access token accepted as Bearer; a tampered token is refused', async () => {
    const res = await post(op.tokenUrl, { grant_type: 'client_credentials', scope: 'things:read' }, { authorization: basic('basic-client', 'basic-secret-123') });
    expect(res.status, JSON.stringify(op.requests.at(-1))).toBe(200);
    expect(res.body.token_type).toBe('Bearer');
    expect(res.body.expires_in).toBe(60);
    expect(res.body.scope).toBe('things:read');
    const token = res.body.access_token as string;
    const claims = decodeJwt(token);
    expect(claims).toMatchObject({ iss: op.issuer, aud: RESOURCE, client_id: 'basic-client', sub: 'basic-client', scope: 'things:read' });
    expect(claims.cnf).toBeUndefined();

    const ok = await get(`${vendor.url}/v1/things?limit=1`, { authorization: `Bearer ${token}` });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ ok: true, sub: 'basic-client', client_id: 'basic-client', scheme: 'Bearer', path: '/v1/things', method: 'GET', bound: null });

    // Flip one character of the payload: the signature no longer matches.
    const [h, p, s] = token.split('.') as [string, string, string];
    const tampered = `${h}.${p.slice(0, 10)}${p[10] === 'A' ? 'B' : 'A'}${p.slice(11)}.${s}`;
    const bad = await get(`${vendor.url}/v1/things`, { authorization: `Bearer ${tampered}` });
    expect(bad.status).toBe(401);
    expect(bad.headers['www-authenticate']).toMatch(/^Bearer error="invalid_token"/);
    expect(bad.body.ok).toBe(false);

    const noAuth = await get(`${vendor.url}/v1/things`, {});
    expect(noAuth.status).toBe(401);

    // A wrong secret: the body says only invalid_client; the record says why.
    const wrong = await post(op.tokenUrl, { grant_type: 'client_credentials' }, { authorization: basic('basic-client', 'nope') });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error).toBe('invalid_client');
    const records = op.requests.filter((r) => r.clientId === 'basic-client');
    expect(records).toHaveLength(2);
    expect(records[0]).toMatchObject({ authMethod: 'client_secret_basic', clientAuthenticated: true, grantType: 'client_credentials', status: 200, tokenType: 'Bearer', hadDpopProof: false });
    expect(records[1]).toMatchObject({ authMethod: 'client_secret_basic', clientAuthenticated: false, status: 401, error: 'invalid_client', errorDetail: 'invalid secret provided' });
    expect(JSON.stringify(op.requests)).not.toContain('basic-secret-123');
    expect(vendor.requests.map((r) => r.status)).toEqual([200, 401, 401]);
  });

  it('private_key_jwt (ES256): aud = token endpoint and aud = issuer both work; a reused jti is refused', async () => {
    const form = (assertion: string) => ({ grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: assertion });

    const byTokenUrl = await post(op.tokenUrl, form(await clientAssertion('jwt-client', jwtKey, op.tokenUrl)));
    expect(byTokenUrl.status, JSON.stringify(op.requests.at(-1))).toBe(200);
    const byIssuer = await post(op.tokenUrl, form(await clientAssertion('jwt-client', jwtKey, op.issuer)));
    expect(byIssuer.status, JSON.stringify(op.requests.at(-1))).toBe(200);
    expect(decodeJwt(byIssuer.body.access_token as string)).toMatchObject({ client_id: 'jwt-client', aud: RESOURCE });

    const jti = randomUUID();
    const first = await post(op.tokenUrl, form(await clientAssertion('jwt-client', jwtKey, [op.tokenUrl], jti)));
    expect(first.status).toBe(200);
    const replay = await post(op.tokenUrl, form(await clientAssertion('jwt-client', jwtKey, op.tokenUrl, jti)));
    expect(replay.status).toBe(401);
    expect(replay.body.error).toBe('invalid_client');

    const wrongAud = await post(op.tokenUrl, form(await clientAssertion('jwt-client', jwtKey, `${op.issuer}/elsewhere`)));
    expect(wrongAud.status).toBe(401);

    const records = op.requests.filter((r) => r.clientId === 'jwt-client');
    expect(records).toHaveLength(5);
    for (const r of records) expect(r.authMethod).toBe('private_key_jwt');
    expect(records.map((r) => r.status)).toEqual([200, 200, 200, 401, 401]);
    expect(records[3]).toMatchObject({ error: 'invalid_client', errorDetail: 'client assertion tokens must only be used once', clientAuthenticated: false });
    expect(records[4]!.errorDetail).toBe('audience (aud) must equal the endpoint url, issuer identifier or token endpoint url');
    expect(records.map((r) => r.clientAssertion?.payload.aud)).toEqual([op.tokenUrl, op.issuer, [op.tokenUrl], op.tokenUrl, `${op.issuer}/elsewhere`]);
    for (const r of records) {
      const { iat, exp } = r.clientAssertion!.payload;
      expect(exp! - iat!).toBeLessThanOrEqual(60);
      expect(r.clientAssertion!.header).toMatchObject({ alg: 'ES256', kid: jwtKey.kid });
    }
    // Two distinct jtis for the two first, and the same one for the last pair.
    const jtis = records.map((r) => r.clientAssertion!.payload.jti);
    expect(new Set(jtis.slice(0, 3)).size).toBe(3);
    expect(jtis[3]).toBe(jtis[2]);
  });

  it('DPoP: token nonce dance, cnf.jkt, vendor proof checks (replay, htu, nonce, Bearer downgrade)', async () => {
    const jkt = await calculateJwkThumbprint(publicParts(dpopKey.publicJwk));
    const form = { grant_type: 'client_credentials', client_id: 'dpop-client', client_secret: 'dpop-secret-456' };

    // A DPoP-bound client without a proof.
    const noProof = await post(op.tokenUrl, form);
    expect(noProof.status).toBe(400);
    expect(noProof.body.error).toBe('invalid_grant');

    const first = await post(op.tokenUrl, form, { dpop: await dpopProof(dpopKey, 'POST', op.tokenUrl) });
    expect(first.status).toBe(400);
    expect(first.body.error).toBe('use_dpop_nonce');
    const nonce = first.headers['dpop-nonce'];
    expect(typeof nonce).toBe('string');

    const second = await post(op.tokenUrl, form, { dpop: await dpopProof(dpopKey, 'POST', op.tokenUrl, { nonce: nonce as string }) });
    expect(second.status, JSON.stringify(op.requests.at(-1))).toBe(200);
    expect(second.body.token_type).toBe('DPoP');
    const token = second.body.access_token as string;
    expect(decodeJwt(token).cnf).toEqual({ jkt });

    const records = op.requests.filter((r) => r.clientId === 'dpop-client');
    expect(records.map((r) => [r.status, r.error ?? null, r.hadDpopProof])).toEqual([
      [400, 'invalid_grant', false],
      [400, 'use_dpop_nonce', true],
      [200, null, true],
    ]);
    expect(records[0]).toMatchObject({ errorDescription: 'grant request is invalid', errorDetail: 'DPoP proof JWT not provided' });
    expect(records[1]!.errorDescription).toBe('nonce is required in the DPoP proof');
    expect(records[1]).toMatchObject({ dpopJkt: jkt, dpopNonceIssued: nonce, authMethod: 'client_secret_post', clientAuthenticated: true });
    expect(records[2]).toMatchObject({ dpopJkt: jkt, dpopNonce: nonce, tokenType: 'DPoP' });

    // Vendor: a good proof, then the same proof again, then a proof for another URL.
    const url = `${vendor.url}/v1/orders`;
    const proof = await dpopProof(dpopKey, 'GET', url, { accessToken: token });
    const ok = await get(`${url}?page=2`, { authorization: `DPoP ${token}`, dpop: proof });
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body).toMatchObject({ ok: true, scheme: 'DPoP', bound: 'jkt', client_id: 'dpop-client', path: '/v1/orders' });

    const replayed = await get(url, { authorization: `DPoP ${token}`, dpop: proof });
    expect(replayed.status).toBe(401);
    expect(replayed.headers['www-authenticate']).toMatch(/^DPoP error="invalid_dpop_proof"/);
    expect(replayed.body.reason).toMatch(/replayed/);

    const wrongHtu = await get(url, { authorization: `DPoP ${token}`, dpop: await dpopProof(dpopKey, 'GET', `${vendor.url}/v1/other`, { accessToken: token }) });
    expect(wrongHtu.status).toBe(401);
    expect(wrongHtu.body.reason).toMatch(/htu mismatch/);

    const asBearer = await get(url, { authorization: `Bearer ${token}` });
    expect(asBearer.status).toBe(401);
    expect(asBearer.headers['www-authenticate']).toMatch(/^Bearer error="invalid_token"/);

    // A proof by another key for this token.
    const otherKey = await generateTestKeyPair('ES256');
    const wrongKey = await get(url, { authorization: `DPoP ${token}`, dpop: await dpopProof(otherKey, 'GET', url, { accessToken: token }) });
    expect(wrongKey.status).toBe(401);
    expect(wrongKey.body.reason).toMatch(/cnf\.jkt/);

    const jtis = vendor.requests.filter((r) => r.scheme === 'DPoP').map((r) => r.jti);
    expect(jtis[0]).toBe(jtis[1]);

    // A vendor that wants its own nonce.
    const strict = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE, requireDpopNonce: true });
    try {
      const surl = `${strict.url}/v1/orders`;
      const noNonce = await get(surl, { authorization: `DPoP ${token}`, dpop: await dpopProof(dpopKey, 'GET', surl, { accessToken: token }) });
      expect(noNonce.status).toBe(401);
      expect(noNonce.headers['www-authenticate']).toMatch(/^DPoP error="use_dpop_nonce"/);
      const vendorNonce = noNonce.headers['dpop-nonce'] as string;
      expect(vendorNonce).toBe(strict.currentNonce());
      const withNonce = await get(surl, { authorization: `DPoP ${token}`, dpop: await dpopProof(dpopKey, 'GET', surl, { accessToken: token, nonce: vendorNonce }) });
      expect(withNonce.status, JSON.stringify(withNonce.body)).toBe(200);
      expect(withNonce.headers['dpop-nonce']).toBe(vendorNonce);
      expect(strict.requests.map((r) => [r.status, r.nonceUsed ?? null])).toEqual([
        [401, null],
        [200, vendorNonce],
      ]);
    } finally {
      await strict.close();
    }
  });
});

describe('oidc-provider + verifying vendor harness (mTLS)', () => {
  let certs: Certs;
  let op: OidcProviderHandle;
  let vendor: VendorHandle;
  const agents: Agent[] = [];
  const agent = (connect: { cert?: string; key?: string }) => {
    const a = new Agent({ connect: { ca: certs.ca, ...connect } });
    agents.push(a);
    return a;
  };

  beforeAll(async () => {
    certs = await makeCerts();
    op = await startOidcProvider({
      tls: true,
      clients: [{ clientId: 'mtls-client', method: 'tls_client_auth', subjectDn: 'CN=token-sidecar-test-client', certificateBound: true }],
    });
    vendor = await startVendor({ issuer: op.issuer, jwks: op.jwks, audience: RESOURCE, tls: { cert: certs.cert, key: certs.key, ca: certs.ca } });
  });

  afterAll(async () => {
    await Promise.all([op?.close(), vendor?.close(), ...agents.map((a) => a.close())]);
  });

  it('tls_client_auth: certificate-bound token usable only with the same client certificate', async () => {
    expect(op.issuer).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const withClientCert = agent({ cert: certs.clientCert, key: certs.clientKey });
    const withServerCert = agent({ cert: certs.cert, key: certs.key }); // has the clientAuth EKU, another subject
    const noCert = agent({});

    const res = await post(op.tokenUrl, { grant_type: 'client_credentials', client_id: 'mtls-client' }, {}, withClientCert);
    expect(res.status, JSON.stringify(op.requests.at(-1))).toBe(200);
    expect(res.body.token_type).toBe('Bearer');
    const token = res.body.access_token as string;
    const x5t = createHash('sha256').update(new X509Certificate(certs.clientCert).raw).digest('base64url');
    expect(decodeJwt(token).cnf).toEqual({ 'x5t#S256': x5t });

    const refusedOther = await post(op.tokenUrl, { grant_type: 'client_credentials', client_id: 'mtls-client' }, {}, withServerCert);
    expect(refusedOther.status).toBe(401);
    const refusedNone = await post(op.tokenUrl, { grant_type: 'client_credentials', client_id: 'mtls-client' }, {}, noCert);
    expect(refusedNone.status).toBe(401);
    expect(op.requests.map((r) => [r.status, r.authMethod, r.hadClientCert, r.errorDetail ?? null])).toEqual([
      [200, 'tls_client_auth', true, null],
      [401, 'tls_client_auth', true, 'certificate subject value does not match the registered one'],
      [401, 'tls_client_auth', false, 'client certificate was not provided'],
    ]);

    const url = `${vendor.url}/v1/secure`;
    const ok = await get(url, { authorization: `Bearer ${token}` }, withClientCert);
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body).toMatchObject({ ok: true, scheme: 'Bearer', bound: 'x5t', client_id: 'mtls-client' });

    const without = await get(url, { authorization: `Bearer ${token}` }, noCert);
    expect(without.status).toBe(401);
    expect(without.body.reason).toMatch(/no TLS client certificate/);
    const other = await get(url, { authorization: `Bearer ${token}` }, withServerCert);
    expect(other.status).toBe(401);
    expect(other.body.reason).toMatch(/does not match/);
    expect(vendor.requests.map((r) => [r.status, r.hadClientCert])).toEqual([
      [200, true],
      [401, false],
      [401, true],
    ]);
  });
});
