/**
 * The token request as the config builds it: every client authentication × every grant loaded from routes.yaml with
 * real key files (RSA 2048, EC P-256, Ed25519 PKCS#8 PEM and a private JWK), and `buildTokenRequest`'s form fields,
 * headers and `sent` list checked field by field against RFC 6749 §2.3.1/§4.4/§6, RFC 7523 §2.1/§2.2/§3 and RFC 8693
 * §2.1. Every signed assertion is verified with jose against the public key. Then what validate refuses: reserved
 * params and headers, cross-field mistakes and key files that are no use, each named by its path, all in one load.
 */
import { createPrivateKey, createPublicKey, generateKeyPair, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfigText, type LoadResult } from '../../src/config/load.js';
import type { OAuth2Auth } from '../../src/config/types.js';
import { buildTokenRequest, type TokenRequest } from '../../src/oauth/token-request.js';
import { makeCerts, type Certs } from '../helpers/certs.js';

type Json = Record<string, unknown>;

const TOKEN_URL = 'https://auth.vendor.example/oauth2/v1/token';
const ISSUER = 'https://auth.vendor.example';
const CLIENT_ID = 'client-1';
/** Characters RFC 6749 §2.3.1 form-encodes before Basic: '@', ' ', ':', '+', '/'. */
const CLIENT_SECRET = 'p@ss word:+/Zq9';
const CLIENT_SECRET_FORM = 'p%40ss+word%3A%2B%2FZq9';
const SEED_REFRESH = 'rt-seed-8f1c2a7e';
const SUBJECT_TOKEN = 'subject.jwt.from-file-77';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
/** Content of the file that is not a key: it must never reach a problem text. */
const NOT_A_KEY = 'TOP-SECRET-not-a-key-5e1d\n-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n';

let dir: string;
let certs: Certs;
const pub: Record<'rsa' | 'ec' | 'ed' | 'jwk', KeyObject> = {} as never;
const file = (name: string) => join(dir, name);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'token-request-'));
  const gen = promisify(generateKeyPair);
  const [rsa, ec, ed, jwkEc, rsa1024] = await Promise.all([
    gen('rsa', { modulusLength: 2048 }),
    gen('ec', { namedCurve: 'P-256' }),
    gen('ed25519'),
    gen('ec', { namedCurve: 'P-256' }),
    gen('rsa', { modulusLength: 1024 }),
  ]);
  const pem = (k: KeyObject) => k.export({ format: 'pem', type: 'pkcs8' }) as string;
  // A private JWK as a vendor console hands it out (through PEM: Node 20 can stall exporting a fresh key to JWK).
  const jwk = { ...createPrivateKey(pem(jwkEc.privateKey)).export({ format: 'jwk' }), kid: 'jwk-in-file', use: 'sig' };
  pub.rsa = rsa.publicKey;
  pub.ec = ec.publicKey;
  pub.ed = ed.publicKey;
  pub.jwk = createPublicKey(pem(jwkEc.privateKey));
  certs = await makeCerts(join(dir, 'certs'));
  await Promise.all([
    writeFile(file('rsa.pem'), pem(rsa.privateKey)),
    writeFile(file('ec.pem'), pem(ec.privateKey)),
    writeFile(file('ed25519.pem'), pem(ed.privateKey)),
    writeFile(file('key.jwk.json'), `${JSON.stringify(jwk)}\n`),
    writeFile(file('rsa1024.pem'), pem(rsa1024.privateKey)),
    writeFile(file('not-a-key.pem'), NOT_A_KEY),
    writeFile(file('client-secret'), `${CLIENT_SECRET}\n`),
    writeFile(file('refresh-token'), `${SEED_REFRESH}\n`),
    writeFile(file('subject-token'), `${SUBJECT_TOKEN}\n`),
  ]);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function route(auth: Json, name = 'r'): Json {
  return {
    name,
    match: { pathPrefix: `/${name}` },
    upstream: 'https://api.vendor.example/v2',
    auth: { type: 'oauth2', tokenUrl: TOKEN_URL, clientId: CLIENT_ID, ...auth },
  };
}

function load(routes: Json[]): Promise<LoadResult> {
  return loadConfigText(stringify({ version: 1, routes }), { env: {}, baseDir: dir });
}

async function authOf(auth: Json): Promise<OAuth2Auth> {
  const loaded = await load([route(auth)]);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const a = loaded.config.routes[0]?.auth;
  if (a?.type !== 'oauth2') throw new Error('expected an oauth2 route');
  return a;
}

function problems(result: LoadResult): string[] {
  if (result.ok) throw new Error('expected the config to be refused');
  return result.problems;
}

const form = (req: TokenRequest) => new URLSearchParams(req.body);
const formKeys = (req: TokenRequest) => [...form(req).keys()].sort();

// ---------------------------------------------------------------------------------------------------------------
// Every client authentication × every grant

const CLIENT_AUTHS = ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth', 'none'] as const;
const GRANTS = ['client_credentials', 'refresh_token', 'jwt_bearer', 'token_exchange'] as const;
type ClientAuth = (typeof CLIENT_AUTHS)[number];
type Grant = (typeof GRANTS)[number];

function clientAuthConfig(method: ClientAuth): Json {
  switch (method) {
    case 'client_secret_basic':
    case 'client_secret_post':
      return { clientAuth: method, clientSecret: { fromFile: 'client-secret' } };
    case 'private_key_jwt':
      return { clientAuth: method, privateKey: { fromFile: 'ec.pem' } };
    case 'tls_client_auth':
    case 'self_signed_tls_client_auth':
      return { clientAuth: method, tls: { cert: { fromFile: certs.clientCertFile }, key: { fromFile: certs.clientKeyFile } } };
    case 'none':
      return { clientAuth: 'none' };
  }
}

function grantConfig(grant: Grant): Json {
  switch (grant) {
    case 'client_credentials':
      return {};
    case 'refresh_token':
      return { grant, refreshToken: { fromFile: 'refresh-token' } };
    case 'jwt_bearer':
      return { grant, assertion: { privateKey: { fromFile: 'rsa.pem' }, subject: 'user-42' } };
    case 'token_exchange':
      return { grant, subjectToken: { fromFile: 'subject-token' } };
  }
}

/** RFC 6749 §4.4.2 / §6, RFC 7523 §2.1, RFC 8693 §2.1: the fields each grant puts in the form (no scope configured). */
const GRANT_FIELDS: Record<Grant, string[]> = {
  client_credentials: ['grant_type'],
  refresh_token: ['grant_type', 'refresh_token'],
  jwt_bearer: ['assertion', 'grant_type'],
  token_exchange: ['grant_type', 'subject_token', 'subject_token_type'],
};
/** RFC 6749 §2.3.1, RFC 7523 §2.2, RFC 8705 §2, public clients (§2.1): the client's fields in the form. */
const CLIENT_FIELDS: Record<ClientAuth, string[]> = {
  client_secret_basic: [],
  client_secret_post: ['client_id', 'client_secret'],
  private_key_jwt: ['client_assertion', 'client_assertion_type', 'client_id'],
  tls_client_auth: ['client_id'],
  self_signed_tls_client_auth: ['client_id'],
  none: ['client_id'],
};

const matrix = CLIENT_AUTHS.flatMap((method) => GRANTS.map((grant) => [method, grant] as const));

describe('every client authentication × every grant, from routes.yaml', () => {
  it.each(matrix)('%s × %s: exactly the fields and headers the RFCs ask for, every credential in `sent`', async (method, grant) => {
    const auth = await authOf({ ...clientAuthConfig(method), ...grantConfig(grant) });
    expect(auth.clientAuth).toBe(method);
    expect(auth.grant).toBe(grant);
    const nowMs = Date.now();
    const req = buildTokenRequest(auth, { nowMs, subjectToken: grant === 'token_exchange' ? SUBJECT_TOKEN : undefined });
    const f = form(req);

    expect(formKeys(req)).toEqual([...GRANT_FIELDS[grant], ...CLIENT_FIELDS[method]].sort());
    // Each field once (URLSearchParams.set): a repeated parameter is a §3.1 error at the endpoint.
    for (const key of f.keys()) expect(f.getAll(key), key).toHaveLength(1);

    // The grant's fields.
    switch (grant) {
      case 'client_credentials':
        expect(f.get('grant_type')).toBe('client_credentials');
        break;
      case 'refresh_token':
        expect(f.get('grant_type')).toBe('refresh_token');
        expect(f.get('refresh_token')).toBe(SEED_REFRESH);
        expect(req.sent).toContain(SEED_REFRESH);
        break;
      case 'jwt_bearer': {
        expect(f.get('grant_type')).toBe(JWT_BEARER);
        const assertion = f.get('assertion') ?? '';
        const { payload } = await jwtVerify(assertion, pub.rsa, { algorithms: ['RS256'], issuer: CLIENT_ID, subject: 'user-42', audience: TOKEN_URL });
        expect(payload.aud).toBe(TOKEN_URL);
        expect(req.sent).toContain(assertion);
        break;
      }
      case 'token_exchange':
        expect(f.get('grant_type')).toBe(TOKEN_EXCHANGE);
        expect(f.get('subject_token')).toBe(SUBJECT_TOKEN);
        expect(f.get('subject_token_type')).toBe(JWT_TYPE);
        expect(req.sent).toContain(SUBJECT_TOKEN);
        break;
    }

    // The client's authentication.
    expect(req.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(req.headers['accept']).toBe('application/json');
    if (method === 'client_secret_basic') {
      // §2.3.1: form-encode id and secret, then Basic.
      const basic = `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET_FORM}`).toString('base64')}`;
      expect(req.headers['authorization']).toBe(basic);
      expect(req.sent).toEqual(expect.arrayContaining([CLIENT_SECRET, CLIENT_SECRET_FORM, basic.slice('Basic '.length)]));
    } else {
      expect(req.headers).not.toHaveProperty('authorization');
      expect(f.get('client_id')).toBe(CLIENT_ID);
    }
    if (method === 'client_secret_post') {
      expect(f.get('client_secret')).toBe(CLIENT_SECRET);
      expect(req.sent).toEqual(expect.arrayContaining([CLIENT_SECRET, CLIENT_SECRET_FORM]));
    }
    if (method === 'private_key_jwt') {
      expect(f.get('client_assertion_type')).toBe(CLIENT_ASSERTION_TYPE);
      const assertion = f.get('client_assertion') ?? '';
      await jwtVerify(assertion, pub.ec, { algorithms: ['ES256'], issuer: CLIENT_ID, subject: CLIENT_ID, audience: TOKEN_URL });
      expect(req.sent).toContain(assertion);
    }
    if (method !== 'client_secret_basic' && method !== 'client_secret_post') {
      // No secret configured, so none can be sent; nothing in the body is a client secret.
      expect(req.body).not.toContain(CLIENT_SECRET_FORM);
    }
    // Longest first, no duplicates (a form that contains another is redacted whole).
    expect(new Set(req.sent).size).toBe(req.sent.length);
    expect([...req.sent].sort((a, b) => b.length - a.length)).toEqual(req.sent);
  });
});

describe('grant fields (RFC 6749 §4.4, §6; RFC 8693 §2.1)', () => {
  it('refresh_token: the newest refresh token handed in wins over the seed, and both spellings are in `sent`', async () => {
    const auth = await authOf({ clientAuth: 'none', ...grantConfig('refresh_token') });
    const rotated = 'rt/rotated+value=2';
    const req = buildTokenRequest(auth, { nowMs: Date.now(), refreshToken: rotated });
    expect(form(req).get('refresh_token')).toBe(rotated);
    expect(req.body).not.toContain(SEED_REFRESH);
    expect(req.sent).toEqual(expect.arrayContaining([rotated, encodeURIComponent(rotated)]));
    expect(req.sent).not.toContain(SEED_REFRESH);
  });

  it('refresh_token: scope (space-separated) is sent with the refresh when configured', async () => {
    const auth = await authOf({ clientAuth: 'none', ...grantConfig('refresh_token'), scopes: ['cob.read', 'cob.write'] });
    const f = form(buildTokenRequest(auth, { nowMs: Date.now() }));
    expect(f.get('scope')).toBe('cob.read cob.write');
    expect([...f.keys()].sort()).toEqual(['client_id', 'grant_type', 'refresh_token', 'scope']);
  });

  it('client_credentials: scope, audience, resource (as written) and extra params', async () => {
    const auth = await authOf({
      ...clientAuthConfig('client_secret_basic'),
      scopes: ['a', 'b:c'],
      audience: 'https://api.vendor.example',
      resource: 'https://api.vendor.example',
      params: { tenant: 'acme' },
    });
    const f = form(buildTokenRequest(auth, { nowMs: Date.now() }));
    expect(Object.fromEntries(f)).toEqual({
      grant_type: 'client_credentials',
      scope: 'a b:c',
      audience: 'https://api.vendor.example',
      // RFC 8707: no trailing slash added by a URL parser.
      resource: 'https://api.vendor.example',
      tenant: 'acme',
    });
  });

  it('token_exchange: subject_token_type and requested_token_type as configured; the subject token is the one read now', async () => {
    const auth = await authOf({
      clientAuth: 'none',
      ...grantConfig('token_exchange'),
      subjectTokenType: 'urn:ietf:params:oauth:token-type:id_token',
      requestedTokenType: 'urn:ietf:params:oauth:token-type:access_token',
    });
    expect(auth.subjectToken?.file).toBe(file('subject-token'));
    const req = buildTokenRequest(auth, { nowMs: Date.now(), subjectToken: 'rotated-subject-token-2' });
    expect(Object.fromEntries(form(req))).toEqual({
      grant_type: TOKEN_EXCHANGE,
      subject_token: 'rotated-subject-token-2',
      subject_token_type: 'urn:ietf:params:oauth:token-type:id_token',
      requested_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      client_id: CLIENT_ID,
    });
    expect(req.sent).toContain('rotated-subject-token-2');
    // The subject token of the load is not a constant of the request: only what is handed in is sent.
    expect(req.body).not.toContain(SUBJECT_TOKEN);
  });

  it('configured headers go on the token request, lowercased, beside the ones the sidecar sets', async () => {
    const auth = await authOf({ ...clientAuthConfig('client_secret_post'), headers: { 'X-Tenant': 'acme', 'x-api-version': '2' } });
    const req = buildTokenRequest(auth, { nowMs: Date.now() });
    expect(req.headers).toEqual({ 'x-tenant': 'acme', 'x-api-version': '2', 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' });
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Signed assertions

interface Verified {
  payload: JWTPayload;
  header: ReturnType<typeof decodeProtectedHeader>;
}

async function clientAssertion(auth: OAuth2Auth, key: KeyObject, alg: string, audience: string, nowMs = Date.now()): Promise<Verified & { jws: string; req: TokenRequest }> {
  const req = buildTokenRequest(auth, { nowMs });
  const jws = form(req).get('client_assertion') ?? '';
  const { payload, protectedHeader } = await jwtVerify(jws, key, { algorithms: [alg], issuer: CLIENT_ID, subject: CLIENT_ID, audience });
  return { payload, header: protectedHeader, jws, req };
}

function expectAssertionShape(v: Verified, nowMs: number, aud: string): void {
  // RFC 7523 §3: one audience, as a single string (several vendors refuse an array).
  expect(typeof v.payload.aud).toBe('string');
  expect(v.payload.aud).toBe(aud);
  expect(v.payload.iat).toBe(Math.floor(nowMs / 1000));
  const lifetime = (v.payload.exp ?? 0) - (v.payload.iat ?? 0);
  expect(lifetime).toBeGreaterThan(0);
  expect(lifetime).toBeLessThanOrEqual(60);
  expect(v.payload.jti).toMatch(/^[A-Za-z0-9_-]{16,}$/);
  expect(v.header.typ).toBe('JWT');
}

describe('private_key_jwt client assertion (RFC 7523 §2.2, §3; OIDC Core §9)', () => {
  it('iss = sub = client_id, aud = the token URL by default, exp - iat <= 60, no kid unless configured', async () => {
    const auth = await authOf({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ec.pem' } });
    const nowMs = Date.now();
    const v = await clientAssertion(auth, pub.ec, 'ES256', TOKEN_URL, nowMs);
    expectAssertionShape(v, nowMs, TOKEN_URL);
    expect(v.header).toEqual({ alg: 'ES256', typ: 'JWT' });
    expect(Object.keys(v.payload).sort()).toEqual(['aud', 'exp', 'iat', 'iss', 'jti', 'sub']);
  });

  it('assertionAudience: tokenUrl is the default spelled out', async () => {
    const auth = await authOf({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ec.pem' }, assertionAudience: 'tokenUrl' });
    const nowMs = Date.now();
    expectAssertionShape(await clientAssertion(auth, pub.ec, 'ES256', TOKEN_URL, nowMs), nowMs, TOKEN_URL);
  });

  it('assertionAudience: issuer → aud is the configured issuer (FAPI 2.0)', async () => {
    const auth = await authOf({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ec.pem' }, assertionAudience: 'issuer', issuer: ISSUER });
    const nowMs = Date.now();
    expectAssertionShape(await clientAssertion(auth, pub.ec, 'ES256', ISSUER, nowMs), nowMs, ISSUER);
  });

  it('assertionAudience: a URL → aud is that URL, as written', async () => {
    const audience = 'https://login.vendor.example/tenant-9/oauth2/token';
    const auth = await authOf({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ec.pem' }, assertionAudience: audience });
    const nowMs = Date.now();
    expectAssertionShape(await clientAssertion(auth, pub.ec, 'ES256', audience, nowMs), nowMs, audience);
  });

  it.each([
    ['RSA 2048 PEM', 'RS256', 'rsa.pem', 'rsa', undefined],
    ['RSA 2048 PEM with signingAlg PS256', 'PS256', 'rsa.pem', 'rsa', 'PS256'],
    ['EC P-256 PEM', 'ES256', 'ec.pem', 'ec', undefined],
    ['Ed25519 PEM', 'EdDSA', 'ed25519.pem', 'ed', undefined],
    ['EC P-256 private JWK', 'ES256', 'key.jwk.json', 'jwk', undefined],
  ] as const)('%s → alg %s, verified with the public key; kid when keyId is set', async (_label, alg, keyFile, pubName, signingAlg) => {
    const auth = await authOf({
      clientAuth: 'private_key_jwt',
      privateKey: { fromFile: keyFile },
      keyId: 'key-2026-01',
      ...(signingAlg ? { signingAlg } : {}),
    });
    expect(auth.clientKey?.alg).toBe(alg);
    const nowMs = Date.now();
    const v = await clientAssertion(auth, pub[pubName], alg, TOKEN_URL, nowMs);
    expectAssertionShape(v, nowMs, TOKEN_URL);
    expect(v.header).toEqual({ alg, typ: 'JWT', kid: 'key-2026-01' });
  });

  it("the JWK file's own kid is not used: kid comes from keyId only (docs/configuration.md: keyId default none)", async () => {
    const auth = await authOf({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'key.jwk.json' } });
    const v = await clientAssertion(auth, pub.jwk, 'ES256', TOKEN_URL);
    expect(v.header).toEqual({ alg: 'ES256', typ: 'JWT' });
  });

  it('a fresh jti on every request: 100 requests, 100 distinct jti and assertions, each in its own `sent`', async () => {
    const auth = await authOf({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ed25519.pem' } });
    const nowMs = Date.now();
    const jtis = new Set<string>();
    const assertions = new Set<string>();
    for (let i = 0; i < 100; i++) {
      // The same clock reading each time: jti alone must make them unique (RFC 7523 §3 replay protection).
      const v = await clientAssertion(auth, pub.ed, 'EdDSA', TOKEN_URL, nowMs);
      jtis.add(String(v.payload.jti));
      assertions.add(v.jws);
      expect(v.req.sent).toContain(v.jws);
    }
    expect(jtis.size).toBe(100);
    expect(assertions.size).toBe(100);
  });
});

describe('jwt_bearer grant assertion (RFC 7523 §2.1, §3)', () => {
  it('iss defaults to the client id, sub is the configured subject, aud the token URL; kid and alg as configured', async () => {
    const auth = await authOf({
      clientAuth: 'none',
      grant: 'jwt_bearer',
      assertion: { privateKey: { fromFile: 'rsa.pem' }, subject: 'user-42', keyId: 'grant-key', signingAlg: 'PS256' },
    });
    const nowMs = Date.now();
    const req = buildTokenRequest(auth, { nowMs });
    const jws = form(req).get('assertion') ?? '';
    const { payload, protectedHeader } = await jwtVerify(jws, pub.rsa, { algorithms: ['PS256'], issuer: CLIENT_ID, subject: 'user-42', audience: TOKEN_URL });
    expectAssertionShape({ payload, header: protectedHeader }, nowMs, TOKEN_URL);
    expect(protectedHeader).toEqual({ alg: 'PS256', typ: 'JWT', kid: 'grant-key' });
    expect(req.sent).toContain(jws);
  });

  it('configured issuer and audience are used as written; a fresh jti each time', async () => {
    const auth = await authOf({
      clientAuth: 'none',
      grant: 'jwt_bearer',
      assertion: { privateKey: { fromFile: 'ec.pem' }, issuer: 'svc-issuer', subject: 'svc-account@acme', audience: 'https://idp.vendor.example' },
    });
    const nowMs = Date.now();
    const jtis = new Set<unknown>();
    for (let i = 0; i < 20; i++) {
      const jws = form(buildTokenRequest(auth, { nowMs })).get('assertion') ?? '';
      const { payload, protectedHeader } = await jwtVerify(jws, pub.ec, {
        algorithms: ['ES256'],
        issuer: 'svc-issuer',
        subject: 'svc-account@acme',
        audience: 'https://idp.vendor.example',
      });
      expectAssertionShape({ payload, header: protectedHeader }, nowMs, 'https://idp.vendor.example');
      jtis.add(payload.jti);
    }
    expect(jtis.size).toBe(20);
  });

  it('with private_key_jwt too: two different assertions, each signed by its own key, both in `sent`', async () => {
    const auth = await authOf({
      clientAuth: 'private_key_jwt',
      privateKey: { fromFile: 'ec.pem' },
      grant: 'jwt_bearer',
      assertion: { privateKey: { fromFile: 'ed25519.pem' }, subject: 'user-7' },
    });
    const req = buildTokenRequest(auth, { nowMs: Date.now() });
    const f = form(req);
    const grantJws = f.get('assertion') ?? '';
    const clientJws = f.get('client_assertion') ?? '';
    expect(grantJws).not.toBe(clientJws);
    await jwtVerify(grantJws, pub.ed, { algorithms: ['EdDSA'], issuer: CLIENT_ID, subject: 'user-7', audience: TOKEN_URL });
    await jwtVerify(clientJws, pub.ec, { algorithms: ['ES256'], issuer: CLIENT_ID, subject: CLIENT_ID, audience: TOKEN_URL });
    // Not interchangeable: the grant assertion does not verify with the client key.
    await expect(jwtVerify(grantJws, pub.ec, { algorithms: ['ES256'] })).rejects.toThrow();
    expect(req.sent).toEqual(expect.arrayContaining([grantJws, clientJws]));
    expect([...f.keys()].sort()).toEqual(['assertion', 'client_assertion', 'client_assertion_type', 'client_id', 'grant_type']);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// What validate refuses

describe('reserved params and headers are refused, each with its path', () => {
  it('params the sidecar sets itself (any case), with the setting to use instead', async () => {
    const params = {
      grant_type: 'password',
      client_assertion: 'x',
      client_assertion_type: 'x',
      assertion: 'x',
      subject_token: 'x',
      subject_token_type: 'x',
      requested_token_type: 'x',
      actor_token: 'x',
      actor_token_type: 'x',
      refresh_token: 'x',
      Client_Secret: 'x',
      tenant: 'acme',
    };
    const found = problems(await load([route({ ...clientAuthConfig('client_secret_basic'), params })]));
    const at = (k: string) => `routes[0].auth.params.${k}: reserved; the sidecar sets it from `;
    expect(found).toEqual([
      `${at('grant_type')}auth.grant`,
      `${at('client_assertion')}auth.privateKey (clientAuth: private_key_jwt)`,
      `${at('client_assertion_type')}auth.clientAuth`,
      `${at('assertion')}auth.assertion (grant: jwt_bearer)`,
      `${at('subject_token')}auth.subjectToken (grant: token_exchange)`,
      `${at('subject_token_type')}auth.subjectTokenType`,
      `${at('requested_token_type')}auth.requestedTokenType`,
      `${at('actor_token')}auth.grant`,
      `${at('actor_token_type')}auth.grant`,
      `${at('refresh_token')}auth.refreshToken (grant: refresh_token)`,
      `${at('Client_Secret')}auth.clientSecret (sent as auth.clientAuth says)`,
    ]);
  });

  it('headers the sidecar sets or that frame the request (any case)', async () => {
    const reserved = ['Authorization', 'DPoP', 'Content-Type', 'content-length', 'Host', 'Transfer-Encoding', 'Connection', 'Expect', 'Proxy-Authorization'];
    const headers = Object.fromEntries([...reserved.map((h) => [h, 'x']), ['x-tenant', 'acme']]);
    const found = problems(await load([route({ ...clientAuthConfig('client_secret_basic'), headers })]));
    expect(found).toEqual(reserved.map((h) => `routes[0].auth.headers.${h}: set by the sidecar; cannot be configured`));
  });
});

describe('cross-field problems, all reported together in one load', () => {
  const cases: Array<[string, Json, string]> = [
    ['clientSecret missing with basic', { clientAuth: 'client_secret_basic' }, 'auth.clientSecret: required with clientAuth: client_secret_basic'],
    ['clientSecret missing with post', { clientAuth: 'client_secret_post' }, 'auth.clientSecret: required with clientAuth: client_secret_post'],
    [
      'clientSecret with private_key_jwt',
      { clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ec.pem' }, clientSecret: 's3cret' },
      'auth.clientSecret: not used with clientAuth: private_key_jwt (remove it)',
    ],
    [
      'private_key_jwt without privateKey',
      { clientAuth: 'private_key_jwt' },
      'auth.privateKey: required with clientAuth: private_key_jwt (a PKCS#8 PEM or JWK file)',
    ],
    [
      'privateKey without private_key_jwt',
      { clientAuth: 'none', privateKey: { fromFile: 'ec.pem' } },
      'auth.privateKey: only used with clientAuth: private_key_jwt (clientAuth is none)',
    ],
    [
      'assertionAudience: issuer without issuer',
      { clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ec.pem' }, assertionAudience: 'issuer' },
      'auth.issuer: required with assertionAudience: issuer',
    ],
    [
      'tls_client_auth without tls',
      { clientAuth: 'tls_client_auth' },
      'auth.tls: clientAuth: tls_client_auth needs tls.cert and tls.key (the client certificate, RFC 8705 §2)',
    ],
    [
      'self_signed_tls_client_auth with a CA only',
      { clientAuth: 'self_signed_tls_client_auth', tls: { ca: { fromFile: 'certs/ca.crt' } } },
      'auth.tls: clientAuth: self_signed_tls_client_auth needs tls.cert and tls.key (the client certificate, RFC 8705 §2)',
    ],
    ['grant refresh_token without refreshToken', { clientAuth: 'none', grant: 'refresh_token' }, 'auth.refreshToken: required with grant: refresh_token'],
    ['grant jwt_bearer without assertion', { clientAuth: 'none', grant: 'jwt_bearer' }, 'auth.assertion: required with grant: jwt_bearer'],
    ['grant token_exchange without subjectToken', { clientAuth: 'none', grant: 'token_exchange' }, 'auth.subjectToken: required with grant: token_exchange'],
    [
      'subjectToken with client_credentials',
      { clientAuth: 'none', subjectToken: { fromFile: 'subject-token' } },
      'auth.subjectToken: only used with grant: token_exchange (grant is client_credentials)',
    ],
    [
      'refreshToken with jwt_bearer',
      { clientAuth: 'none', grant: 'jwt_bearer', assertion: { privateKey: { fromFile: 'ec.pem' }, subject: 's' }, refreshToken: 'rt-x-123' },
      'auth.refreshToken: only used with grant: refresh_token (grant is jwt_bearer)',
    ],
  ];

  it('one route per mistake: every problem once, with its path, and nothing else', async () => {
    const found = problems(await load(cases.map(([, auth], i) => route(auth, `r${i}`))));
    expect(found.sort()).toEqual(cases.map(([, , message], i) => `routes[${i}].${message}`).sort());
  });

  it('several mistakes in one route are all reported', async () => {
    const found = problems(
      await load([route({ clientAuth: 'tls_client_auth', clientSecret: 's3cret', keyId: 'k', grant: 'refresh_token', subjectToken: { fromFile: 'subject-token' } })]),
    );
    expect(found.sort()).toEqual(
      [
        'routes[0].auth.clientSecret: not used with clientAuth: tls_client_auth (remove it)',
        'routes[0].auth.keyId: only used with clientAuth: private_key_jwt (clientAuth is tls_client_auth)',
        'routes[0].auth.tls: clientAuth: tls_client_auth needs tls.cert and tls.key (the client certificate, RFC 8705 §2)',
        'routes[0].auth.refreshToken: required with grant: refresh_token',
        'routes[0].auth.subjectToken: only used with grant: token_exchange (grant is refresh_token)',
      ].sort(),
    );
  });
});

describe('key files that are no use are refused by path, never shown', () => {
  const badKeys: Array<[string, Json, string]> = [
    ['a file that is not a key', { clientAuth: 'private_key_jwt', privateKey: { fromFile: 'not-a-key.pem' } }, 'auth.privateKey: is not a private key (expected a PKCS#8 PEM or a private JWK)'],
    ['an RSA 1024 key', { clientAuth: 'private_key_jwt', privateKey: { fromFile: 'rsa1024.pem' } }, 'auth.privateKey: is an RSA key shorter than 2048 bits'],
    [
      'an EC key with signingAlg RS256',
      { clientAuth: 'private_key_jwt', privateKey: { fromFile: 'ec.pem' }, signingAlg: 'RS256' },
      'auth.privateKey: is an EC prime256v1 key, which cannot sign RS256 (use ES256)',
    ],
    [
      'an Ed25519 key with signingAlg ES256 in the grant assertion',
      { clientAuth: 'none', grant: 'jwt_bearer', assertion: { privateKey: { fromFile: 'ed25519.pem' }, signingAlg: 'ES256', subject: 's' } },
      'auth.assertion.privateKey: is an ed25519 key, which cannot sign ES256 (use EdDSA)',
    ],
    [
      'a public key as the DPoP key',
      { clientAuth: 'none', dpop: { key: { fromFile: 'public.pem' } } },
      'auth.dpop.key: is not a private key (expected a PKCS#8 PEM or a private JWK)',
    ],
  ];

  beforeAll(async () => {
    await writeFile(file('public.pem'), pub.ec.export({ format: 'pem', type: 'spki' }));
  });

  it('all in one load, each named by its config path, no file content in any problem', async () => {
    const found = problems(await load(badKeys.map(([, auth], i) => route(auth, `k${i}`))));
    expect(found.sort()).toEqual(badKeys.map(([, , message], i) => `routes[${i}].${message}`).sort());
    for (const p of found) {
      expect(p).not.toContain('TOP-SECRET');
      expect(p).not.toContain('BEGIN');
      expect(p).not.toMatch(/[A-Za-z0-9+/]{40,}/);
    }
  });

  // Was a defect, fixed (src/config/load.ts loadParsed): when the schema refuses anything, build() never runs, so the key files
  // are only checked for readability (checkRawSecrets) and their content problems appear only after the schema ones
  // are fixed: two validate runs where the module promises one ("so one `validate` run shows everything to fix").
  it('a key file that is no use is reported in the same load as a schema problem elsewhere', async () => {
    const found = problems(
      await load([
        route({ clientAuth: 'client_secret_basic' }, 'schema'),
        route({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'not-a-key.pem' } }, 'key'),
        route({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'rsa1024.pem' } }, 'short'),
      ]),
    );
    expect(found.sort()).toEqual(
      [
        'routes[0].auth.clientSecret: required with clientAuth: client_secret_basic',
        'routes[1].auth.privateKey: is not a private key (expected a PKCS#8 PEM or a private JWK)',
        'routes[2].auth.privateKey: is an RSA key shorter than 2048 bits',
      ].sort(),
    );
  });

  it('with a schema problem elsewhere: an unreadable key file too', async () => {
    const found = problems(
      await load([
        route({ clientAuth: 'client_secret_basic' }, 'schema'),
        route({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'not-a-key.pem' } }, 'key'),
        route({ clientAuth: 'private_key_jwt', privateKey: { fromFile: 'no-such-key.pem' } }, 'missing'),
      ]),
    );
    expect(found.sort()).toEqual(
      [
        'routes[0].auth.clientSecret: required with clientAuth: client_secret_basic',
        'routes[1].auth.privateKey: is not a private key (expected a PKCS#8 PEM or a private JWK)',
        'routes[2].auth.privateKey: cannot read no-such-key.pem (ENOENT)',
      ].sort(),
    );
  });
});
