/**
 * A real OAuth 2.0 authorization server for tests: panva's oidc-provider (v9) in-process, on its own
 * http(s) server on 127.0.0.1, port 0. Only the client_credentials grant is used; the access tokens are
 * JWTs (RFC 9068, `typ: at+jwt`) signed with a throwaway RS256 key, so a test vendor can verify them
 * against `jwks` (see ./vendor.ts). DPoP (RFC 9449) and mTLS (RFC 8705) binding are on: a bound token
 * carries `cnf.jkt` / `cnf['x5t#S256']` in its JWT payload.
 *
 * Every token-endpoint call is recorded in `requests` (without secrets), including oidc-provider's
 * `error_detail`, which is the only place that says *why* a client authentication failed: the response
 * body of every client-auth failure is the same `{"error":"invalid_client","error_description":"client
 * authentication failed"}`.
 *
 * private_key_jwt assertion audience (checked in oidc-provider 9.13.3, lib/shared/jwt_client_auth.js and
 * lib/helpers/oidc_context.js `clientJwtAuthExpectedAudience()`): the accepted `aud` values are
 * `new Set([issuer, urlFor('token'), urlFor(currentRoute)])`, i.e. the issuer identifier OR the token
 * endpoint URL (on the token route both urlFor values are the same). An array `aud` passes when any member
 * is one of these. No configuration is needed for both styles; only a FAPI 2.0 profile (not enabled here)
 * narrows it to the issuer. Note that `urlFor` is built from the request's own Host header (the provider
 * runs with `proxy: false`), so "the token endpoint URL" means the URL as the client addressed it: an
 * assertion for http://localhost:PORT/token sent to 127.0.0.1:PORT is refused.
 *
 * Other oidc-provider 9 behaviour worth knowing (observed here):
 * - DPoP nonces: errors are 400 `use_dpop_nonce` with a `DPoP-Nonce` header, descriptions
 *   'nonce is required in the DPoP proof' / 'invalid nonce in DPoP proof'. Because a nonceSecret is set,
 *   EVERY answer to a DPoP request carries a fresh `DPoP-Nonce` even when nonces are not required. Nonces
 *   are HKDF values of 60 s time steps, valid for about ±2 steps (so a few minutes).
 * - A dpopBound client without a proof: 400 invalid_grant 'grant request is invalid', error_detail
 *   'DPoP proof JWT not provided'; a replayed proof: error_detail 'DPoP proof JWT Replay detected'.
 * - `cnf` is only in the JWT payload (`cnf.jkt`, `cnf['x5t#S256']`), never in the token response;
 *   a DPoP-bound response has `token_type: 'DPoP'`, a certificate-bound one stays 'Bearer'.
 * - The mTLS hook that checks the CA is `certificateAuthorized` (no `certificateAuthorityCheck`).
 * - A client's `scope` metadata must only name scopes in the provider's `scopes` list
 *   (else 400 invalid_client_metadata at the token endpoint): the union of the clients' scopes is added.
 */
import { createPrivateKey, createPublicKey, generateKeyPair, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { calculateJwkThumbprint, decodeJwt, decodeProtectedHeader, type JWK, type JWTPayload, type ProtectedHeaderParameters } from 'jose';
import { makeCerts } from './certs.js';

export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt' | 'tls_client_auth' | 'self_signed_tls_client_auth';

export interface OidcClientDefinition {
  clientId: string;
  method: ClientAuthMethod;
  /** client_secret_basic / client_secret_post. */
  secret?: string;
  /** Public keys: private_key_jwt (verification keys), self_signed_tls_client_auth (with `x5c`). */
  jwks?: { keys: JWK[] };
  /** tls_client_auth: `tls_client_auth_subject_dn`, e.g. `CN=token-sidecar-test-client`. */
  subjectDn?: string;
  /** `dpop_bound_access_tokens`: a token request without a DPoP proof is refused. */
  dpopBound?: boolean;
  /** `tls_client_certificate_bound_access_tokens`: the token gets `cnf['x5t#S256']` of the client cert. */
  certificateBound?: boolean;
  /** Space-separated scopes the client may get (also its resource-server scope). */
  scopes?: string;
}

export interface OidcProviderOptions {
  clients: OidcClientDefinition[];
  /** Listen HTTPS (requestCert, rejectUnauthorized: false) for mTLS client auth. `true`: makeCerts(). */
  tls?: boolean | { cert: string; key: string; ca: string };
  /** Require a server nonce in DPoP proofs at the token endpoint (can be changed later). */
  dpopRequireNonce?: boolean;
  /** The access token audience (resource indicator). Default `https://api.vendor.test`. */
  resource?: string;
  /** Access token lifetime in whole seconds. Default 60. */
  tokenTtlS?: number;
}

export interface TokenRequestRecord {
  /** Authenticated client, else the client_id the request claimed (body, Basic header or assertion sub). */
  clientId?: string;
  /**
   * The method the request used: the registered method once the client authenticated; otherwise what the
   * request looked like (Basic header, client_secret in the body, client_assertion, or none of those).
   */
  authMethod?: string;
  /** True when the client authentication succeeded (the request got past it). */
  clientAuthenticated: boolean;
  grantType?: string;
  scope?: string;
  resource?: string | string[];
  /** JWK thumbprint of the key in the DPoP proof (not verified here: the provider does that). */
  dpopJkt?: string;
  hadDpopProof: boolean;
  /** The `nonce` claim of the DPoP proof, if any. */
  dpopNonce?: string;
  /** The `DPoP-Nonce` header the provider answered with, if any. */
  dpopNonceIssued?: string;
  /** True when the TLS connection carried a client certificate. */
  hadClientCert: boolean;
  status: number;
  error?: string;
  errorDescription?: string;
  /** oidc-provider's internal reason (e.g. 'client assertion tokens must only be used once'). */
  errorDetail?: string;
  tokenType?: string;
  expiresIn?: number;
  /** The client_assertion, decoded but NOT verified. */
  clientAssertion?: { header: ProtectedHeaderParameters; payload: JWTPayload };
}

export interface OidcProviderHandle {
  issuer: string;
  tokenUrl: string;
  jwksUrl: string;
  /** The provider's public signing keys (what jwksUrl serves). */
  jwks: { keys: JWK[] };
  /** The CA PEM that signed the provider's TLS certificate (https only). */
  ca?: string;
  requests: TokenRequestRecord[];
  setDpopRequireNonce(required: boolean): void;
  /** Lifetime (whole seconds) of tokens issued from now on. */
  setTokenTtl(seconds: number): void;
  close(): Promise<void>;
}

export type TestKeyAlg = 'ES256' | 'RS256' | 'PS256' | 'EdDSA';

export interface TestKeyPair {
  alg: TestKeyAlg;
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  privateKeyPem: string;
  publicKeyPem: string;
  /** Public JWK with `kid`, `alg` and `use: 'sig'`. */
  publicJwk: JWK;
  privateJwk: JWK;
}

/**
 * A signing key pair, generated as PEM and read back (Node 20.20 can deadlock when a freshly generated
 * KeyObject is exported as JWK while a GC runs; from PEM it does not).
 */
export async function generateTestKeyPair(alg: TestKeyAlg): Promise<TestKeyPair> {
  const pems = await new Promise<{ privateKey: string; publicKey: string }>((resolve, reject) => {
    const enc = { publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } } as const;
    const done = (err: Error | null, publicKey: string, privateKey: string) => (err ? reject(err) : resolve({ publicKey, privateKey }));
    if (alg === 'ES256') generateKeyPair('ec', { namedCurve: 'P-256', ...enc }, done);
    else if (alg === 'EdDSA') generateKeyPair('ed25519', enc, done);
    else generateKeyPair('rsa', { modulusLength: 2048, ...enc }, done);
  });
  const privateKey = createPrivateKey(pems.privateKey);
  const publicKey = createPublicKey(pems.publicKey);
  const publicBase = publicKey.export({ format: 'jwk' }) as JWK;
  const kid = await calculateJwkThumbprint(publicBase);
  const publicJwk: JWK = { ...publicBase, kid, alg, use: 'sig' };
  const privateJwk: JWK = { ...(privateKey.export({ format: 'jwk' }) as JWK), kid, alg, use: 'sig' };
  return { alg, kid, privateKey, publicKey, privateKeyPem: pems.privateKey, publicKeyPem: pems.publicKey, publicJwk, privateJwk };
}

// ---- the oidc-provider boundary: the package ships no types, so the little we use is declared here ----

interface ProviderContext {
  method: string;
  path: string;
  status: number;
  body: unknown;
  socket: Socket;
  req: http.IncomingMessage;
  get(field: string): string;
  response: { get(field: string): string };
  /** Defined by oidc-provider on its routes (a getter); absent on unknown paths. */
  readonly oidc?: {
    body?: Record<string, unknown>;
    params?: Record<string, unknown>;
    client?: { clientId: string; clientAuthMethod: string };
  };
}

interface ProviderClientView {
  scope?: string;
}

interface OidcProviderError extends Error {
  error?: string;
  error_description?: string;
  error_detail?: string;
}

interface ProviderInstance {
  proxy: boolean;
  callback(): http.RequestListener;
  use(middleware: (ctx: ProviderContext, next: () => Promise<void>) => Promise<void>): void;
  on(event: 'grant.error' | 'server_error', listener: (ctx: ProviderContext, err: OidcProviderError) => void): void;
}

interface ProviderModule {
  default: new (issuer: string, configuration: Record<string, unknown>) => ProviderInstance;
  errors: { InvalidTarget: new (description?: string) => Error };
}

// A string-typed specifier: tsc does not try to resolve (and reject) the untyped package; the shape we
// rely on is ProviderModule above, and this is the only cast.
const OIDC_PROVIDER: string = 'oidc-provider';
let providerModule: Promise<ProviderModule> | undefined;
function loadProvider(): Promise<ProviderModule> {
  return (providerModule ??= import(OIDC_PROVIDER) as Promise<ProviderModule>);
}

/** A Map-based storage adapter (the built-in one prints a "development-only" warning per provider). */
function memoryAdapterFactory(): (model: string) => Record<string, (...args: never[]) => Promise<unknown>> {
  interface Entry {
    payload: Record<string, unknown>;
    expiresAt: number;
  }
  const store = new Map<string, Entry>();
  const live = (key: string): Entry | undefined => {
    const e = store.get(key);
    if (e && e.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return e;
  };
  return (model: string) => ({
    async upsert(id: string, payload: Record<string, unknown>, expiresIn?: number) {
      store.set(`${model}:${id}`, { payload, expiresAt: typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity });
    },
    async find(id: string) {
      return live(`${model}:${id}`)?.payload;
    },
    async findByUid(uid: string) {
      for (const [key, e] of store) if (key.startsWith(`${model}:`) && e.payload.uid === uid && live(key)) return e.payload;
      return undefined;
    },
    async findByUserCode(userCode: string) {
      for (const [key, e] of store) if (key.startsWith(`${model}:`) && e.payload.userCode === userCode && live(key)) return e.payload;
      return undefined;
    },
    async consume(id: string) {
      const e = live(`${model}:${id}`);
      if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
    },
    async destroy(id: string) {
      store.delete(`${model}:${id}`);
    },
    async revokeByGrantId(grantId: string) {
      for (const [key, e] of store) if (e.payload.grantId === grantId) store.delete(key);
    },
  });
}

// ---- mTLS helpers ----

function peerCertificate(socket: Socket | undefined): X509Certificate | undefined {
  if (!(socket instanceof TLSSocket)) return undefined;
  const peer = socket.getPeerCertificate(false) as { raw?: Buffer } | null;
  return peer?.raw ? new X509Certificate(peer.raw) : undefined;
}

/** RDNs of an RFC 4514 string (`CN=a,O=b`) or of Node's X509Certificate.subject (`CN=a\nO=b`). */
function rdns(dn: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < dn.length; i++) {
    const ch = dn[i]!;
    if (ch === '\\' && i + 1 < dn.length) {
      current += ch + dn[++i]!;
    } else if (ch === ',' || ch === '\n' || ch === '+') {
      parts.push(current);
      current = '';
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => {
      const eq = p.indexOf('=');
      return eq === -1 ? p : `${p.slice(0, eq).trim().toUpperCase()}=${p.slice(eq + 1).trim()}`;
    })
    .sort();
}

function subjectMatches(cert: X509Certificate, property: string, expected: string): boolean {
  const sans = (prefix: string) =>
    (cert.subjectAltName ?? '')
      .split(', ')
      .filter((s) => s.startsWith(prefix))
      .map((s) => s.slice(prefix.length));
  switch (property) {
    case 'tls_client_auth_subject_dn': {
      const a = rdns(cert.subject);
      const b = rdns(expected);
      return a.length === b.length && a.every((v, i) => v === b[i]);
    }
    case 'tls_client_auth_san_dns':
      return sans('DNS:').some((v) => v.toLowerCase() === expected.toLowerCase());
    case 'tls_client_auth_san_ip':
      return sans('IP Address:').includes(expected);
    case 'tls_client_auth_san_uri':
      return sans('URI:').includes(expected);
    case 'tls_client_auth_san_email':
      return sans('email:').includes(expected);
    default:
      return false;
  }
}

function issuedBy(cert: X509Certificate, ca: X509Certificate): boolean {
  const now = Date.now();
  return (
    cert.checkIssued(ca) &&
    cert.verify(ca.publicKey) &&
    Date.parse(cert.validFrom) <= now &&
    now <= Date.parse(cert.validTo)
  );
}

// ---- request records ----

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function basicClientId(authorization: string): string | undefined {
  const m = /^basic\s+(\S+)$/i.exec(authorization);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i === -1) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, i).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

async function buildRecord(ctx: ProviderContext, err: OidcProviderError | undefined): Promise<TokenRequestRecord> {
  const oidc = ctx.oidc;
  const body = oidc?.body ?? {};
  const authorization = ctx.get('authorization');
  const assertion = str(body.client_assertion);
  const dpop = ctx.get('dpop');

  let clientAssertion: TokenRequestRecord['clientAssertion'];
  if (assertion) {
    try {
      clientAssertion = { header: decodeProtectedHeader(assertion), payload: decodeJwt(assertion) };
    } catch {
      clientAssertion = undefined;
    }
  }

  let dpopJkt: string | undefined;
  let dpopNonce: string | undefined;
  if (dpop) {
    try {
      const { jwk } = decodeProtectedHeader(dpop);
      if (jwk) dpopJkt = await calculateJwkThumbprint(jwk);
      dpopNonce = str(decodeJwt(dpop).nonce);
    } catch {
      // A malformed proof: the provider's error says so.
    }
  }

  const client = oidc?.client;
  // Once the client is known, a failure from the client-auth stage leaves `invalid_client`; anything else
  // (invalid_grant, use_dpop_nonce, ...) happened after the client authenticated.
  const clientAuthenticated = client !== undefined && err?.error !== 'invalid_client' && ctx.status < 500;
  let authMethod: string | undefined;
  if (clientAuthenticated) authMethod = client.clientAuthMethod;
  else if (authorization && /^basic\s/i.test(authorization)) authMethod = 'client_secret_basic';
  else if (body.client_secret !== undefined) authMethod = 'client_secret_post';
  else if (assertion) authMethod = clientAssertion?.header.alg?.startsWith('HS') ? 'client_secret_jwt' : 'private_key_jwt';
  else if (client && client.clientAuthMethod.includes('tls_client_auth')) authMethod = client.clientAuthMethod;
  else authMethod = 'none';

  const out = (typeof ctx.body === 'object' && ctx.body !== null ? ctx.body : {}) as Record<string, unknown>;
  const record: TokenRequestRecord = {
    clientId: client?.clientId ?? str(body.client_id) ?? (authorization ? basicClientId(authorization) : undefined) ?? str(clientAssertion?.payload.sub),
    authMethod,
    clientAuthenticated,
    grantType: str(body.grant_type),
    scope: str(body.scope),
    resource: typeof body.resource === 'string' || Array.isArray(body.resource) ? (body.resource as string | string[]) : undefined,
    dpopJkt,
    hadDpopProof: dpop !== '',
    dpopNonce,
    dpopNonceIssued: ctx.response.get('dpop-nonce') || undefined,
    hadClientCert: peerCertificate(ctx.socket) !== undefined,
    status: ctx.status,
    error: str(out.error) ?? err?.error,
    errorDescription: str(out.error_description) ?? err?.error_description,
    errorDetail: err?.error_detail ?? (err && ctx.status >= 500 ? err.message : undefined),
    tokenType: str(out.token_type),
    expiresIn: typeof out.expires_in === 'number' ? out.expires_in : undefined,
    clientAssertion,
  };
  for (const key of Object.keys(record) as (keyof TokenRequestRecord)[]) if (record[key] === undefined) delete record[key];
  return record;
}

function clientMetadata(c: OidcClientDefinition): Record<string, unknown> {
  const meta: Record<string, unknown> = {
    client_id: c.clientId,
    token_endpoint_auth_method: c.method,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
  if (c.secret !== undefined) meta.client_secret = c.secret;
  if (c.jwks) meta.jwks = c.jwks;
  if (c.subjectDn !== undefined) meta.tls_client_auth_subject_dn = c.subjectDn;
  if (c.dpopBound) meta.dpop_bound_access_tokens = true;
  if (c.certificateBound) meta.tls_client_certificate_bound_access_tokens = true;
  if (c.scopes !== undefined) meta.scope = c.scopes;
  return meta;
}

/** Start an oidc-provider on 127.0.0.1 (port 0). See the file comment. */
export async function startOidcProvider(opts: OidcProviderOptions): Promise<OidcProviderHandle> {
  const { default: Provider, errors } = await loadProvider();
  const tls = opts.tls === true ? await makeCerts() : opts.tls || undefined;
  const caCert = tls ? new X509Certificate(tls.ca) : undefined;
  const resource = opts.resource ?? 'https://api.vendor.test';
  let ttlS = opts.tokenTtlS ?? 60;
  let requireNonce = opts.dpopRequireNonce ?? false;
  const allScopes = [...new Set(opts.clients.flatMap((c) => (c.scopes ?? '').split(' ').filter(Boolean)))].join(' ');

  const signing = await generateTestKeyPair('RS256');
  const jwks = { keys: [signing.publicJwk] };

  let handler: http.RequestListener = (_req, res) => {
    res.writeHead(503).end();
  };
  const listener: http.RequestListener = (req, res) => handler(req, res);
  const server: http.Server | https.Server = tls
    ? https.createServer({ cert: tls.cert, key: tls.key, ca: tls.ca, requestCert: true, rejectUnauthorized: false }, listener)
    : http.createServer(listener);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

  const configuration: Record<string, unknown> = {
    adapter: memoryAdapterFactory(),
    clients: opts.clients.map(clientMetadata),
    // A client's `scope` metadata may only name scopes the provider knows; known scopes are also checked
    // against the client's list at the token endpoint (invalid_scope otherwise).
    scopes: ['openid', 'offline_access', ...allScopes.split(' ').filter(Boolean)],
    jwks: { keys: [signing.privateJwk] },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256', 'Ed25519', 'EdDSA'],
      dPoPSigningAlgValues: ['ES256', 'RS256', 'PS256', 'Ed25519', 'EdDSA'],
    },
    ttl: {
      ClientCredentials: () => ttlS,
    },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      dPoP: {
        enabled: true,
        nonceSecret: randomBytes(32),
        requireNonce: () => requireNonce,
      },
      mTLS: {
        enabled: true,
        certificateBoundAccessTokens: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        getCertificate: (ctx: ProviderContext) => peerCertificate(ctx.socket ?? ctx.req.socket)?.toString(),
        // oidc-provider 9 calls this `certificateAuthorized` (there is no `certificateAuthorityCheck`).
        certificateAuthorized: (ctx: ProviderContext) => {
          const cert = peerCertificate(ctx.socket ?? ctx.req.socket);
          return !!(cert && caCert && issuedBy(cert, caCert));
        },
        certificateSubjectMatches: (ctx: ProviderContext, property: string, expected: string) => {
          const cert = peerCertificate(ctx.socket ?? ctx.req.socket);
          return !!cert && subjectMatches(cert, property, expected);
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => resource,
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx: unknown, indicator: string, client: ProviderClientView) => {
          if (indicator !== resource) throw new errors.InvalidTarget(`unknown resource indicator (this provider serves ${resource})`);
          return {
            scope: client.scope ?? allScopes,
            audience: resource,
            accessTokenFormat: 'jwt',
            accessTokenTTL: ttlS,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  };

  let provider: ProviderInstance;
  try {
    provider = new Provider(issuer, configuration);
  } catch (err) {
    server.close();
    throw err;
  }
  provider.proxy = false;

  const requests: TokenRequestRecord[] = [];
  const errorsByCtx = new WeakMap<object, OidcProviderError>();
  const onError = (ctx: ProviderContext, err: OidcProviderError) => {
    errorsByCtx.set(ctx, err);
  };
  provider.on('grant.error', onError);
  provider.on('server_error', onError);
  provider.use(async (ctx, next) => {
    if (ctx.path !== '/token') return next();
    await next();
    try {
      requests.push(await buildRecord(ctx, errorsByCtx.get(ctx)));
    } catch (err) {
      requests.push({ hadDpopProof: false, hadClientCert: false, clientAuthenticated: false, status: ctx.status, error: 'harness_record_failed', errorDetail: String(err) });
    }
  });
  handler = provider.callback();

  return {
    issuer,
    tokenUrl: `${issuer}/token`,
    jwksUrl: `${issuer}/jwks`,
    jwks,
    ca: tls?.ca,
    requests,
    setDpopRequireNonce(required) {
      requireNonce = required;
    },
    setTokenTtl(seconds) {
      ttlS = seconds;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
