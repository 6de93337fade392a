/**
 * A vendor API for tests that REALLY verifies what it is sent, with jose:
 *
 * - `Authorization: Bearer <jwt>`: an RFC 9068 JWT access token (`typ: at+jwt`), signature against the
 *   OAuth server's JWKS, `iss`, `aud`, `exp`. A DPoP-bound token (`cnf.jkt`) sent as Bearer is refused.
 * - `Authorization: DPoP <jwt>` plus a `DPoP` proof (RFC 9449 §4.3, §7.1): `typ: dpop+jwt`, an asymmetric
 *   `alg`, the signature by the embedded public `jwk`, `htm`, `htu` (= externalBase + path, no query or
 *   fragment), `iat` within ±60 s, `ath`, a `jti` never seen before, `cnf.jkt` = thumbprint of the jwk,
 *   and (with `requireDpopNonce`) the vendor's current nonce.
 * - `cnf['x5t#S256']` in the token (RFC 8705): the TLS client certificate of this connection must have
 *   that SHA-256 thumbprint.
 *
 * 200 `{ ok: true, sub, client_id, scheme, path, method, bound }`, or 401 with `WWW-Authenticate` and
 * `{ ok: false, reason }`. Every request is recorded in `requests`.
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  decodeProtectedHeader,
  EmbeddedJWK,
  errors as joseErrors,
  jwtVerify,
  type JWK,
  type JWTPayload,
  type JWTVerifyGetKey,
} from 'jose';
import { Agent, request } from 'undici';

export interface VendorOptions {
  /** The OAuth server's issuer (`iss` of the access tokens). */
  issuer: string;
  /** The expected `aud` of the access tokens. */
  audience: string;
  /** The OAuth server's public keys; or `jwksUrl` (fetched at start and again on an unknown `kid`). */
  jwks?: { keys: JWK[] };
  jwksUrl?: string;
  /** CA to trust when `jwksUrl` is https. */
  jwksCa?: string;
  /** Listen HTTPS (requestCert, rejectUnauthorized: false) so the client certificate can be read. */
  tls?: { cert: string; key: string; ca?: string };
  /** Demand the vendor's current DPoP nonce in every proof (RFC 9449 §9). */
  requireDpopNonce?: boolean;
  /** The base URL `htu` must match (the vendor as the client addresses it). Default: its own URL. */
  externalBase?: string;
  /** Allowed |now - iat| of a DPoP proof, seconds. Default 60. */
  dpopIatWindowS?: number;
}

export type VendorScheme = 'Bearer' | 'DPoP';
export type VendorBinding = 'jkt' | 'x5t' | null;

export interface VendorRecord {
  method: string;
  /** The path without query. */
  path: string;
  query?: string;
  status: number;
  reason?: string;
  scheme?: VendorScheme;
  /** The DPoP proof's jti. */
  jti?: string;
  /** The nonce claim of the DPoP proof. */
  nonceUsed?: string;
  clientId?: string;
  bound?: VendorBinding;
  hadClientCert: boolean;
  bodyBytes: number;
  /** Request headers, with the Authorization and DPoP values reduced to their scheme / "<proof>". */
  headers: Record<string, string | string[] | undefined>;
}

export interface VendorHandle {
  url: string;
  requests: VendorRecord[];
  /** The nonce the vendor currently demands (and advertises in `DPoP-Nonce`). */
  currentNonce(): string;
  /** Make a new current nonce; proofs carrying the old one get `use_dpop_nonce` from now on. */
  rotateDpopNonce(): string;
  setRequireDpopNonce(required: boolean): void;
  close(): Promise<void>;
}

const ASYMMETRIC_ALGS = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'EdDSA', 'Ed25519'];
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k', 'priv'];
const BODY_LIMIT = 1024 * 1024;

class Refusal extends Error {
  constructor(
    readonly challenge: string,
    readonly reason: string,
    readonly extraHeaders: Record<string, string> = {},
  ) {
    super(reason);
  }
}

const quote = (s: string) => `"${s.replace(/["\\]/g, '\\$&')}"`;
const invalidToken = (scheme: VendorScheme, reason: string) => new Refusal(`${scheme} error="invalid_token", error_description=${quote(reason)}`, reason);
const invalidProof = (reason: string) =>
  new Refusal(`DPoP error="invalid_dpop_proof", error_description=${quote(reason)}, algs="${ASYMMETRIC_ALGS.join(' ')}"`, reason);

function b64urlSha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('base64url');
}

function peerCertificateDer(socket: Socket): Buffer | undefined {
  if (!(socket instanceof TLSSocket)) return undefined;
  const peer = socket.getPeerCertificate(false) as { raw?: Buffer } | null;
  return peer?.raw;
}

function normalizedUrl(u: string): string | undefined {
  const url = URL.parse(u);
  if (!url) return undefined;
  url.search = '';
  url.hash = '';
  return url.href;
}

/** A JWKS key resolver for `jwksUrl`: fetched now, re-fetched (at most every 2 s) on an unknown kid. */
async function remoteKeys(jwksUrl: string, ca: string | undefined): Promise<{ getKey: JWTVerifyGetKey; close(): Promise<void> }> {
  const dispatcher = new Agent(ca ? { connect: { ca } } : {});
  let local: JWTVerifyGetKey | undefined;
  let fetchedAt = 0;
  const refresh = async () => {
    const res = await request(jwksUrl, { dispatcher, headers: { accept: 'application/json' } });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`JWKS fetch from ${jwksUrl}: HTTP ${res.statusCode}`);
    local = createLocalJWKSet(JSON.parse(text) as { keys: JWK[] });
    fetchedAt = Date.now();
  };
  await refresh();
  const getKey: JWTVerifyGetKey = async (header, token) => {
    try {
      return await local!(header, token);
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey) || Date.now() - fetchedAt < 2_000) throw err;
      await refresh();
      return local!(header, token);
    }
  };
  return { getKey, close: () => dispatcher.close() };
}

/** Start the vendor on 127.0.0.1, port 0. */
export async function startVendor(opts: VendorOptions): Promise<VendorHandle> {
  if (!opts.jwks && !opts.jwksUrl) throw new Error('startVendor: jwks or jwksUrl is required');
  const remote = opts.jwks ? undefined : await remoteKeys(opts.jwksUrl!, opts.jwksCa);
  const getKey: JWTVerifyGetKey = opts.jwks ? createLocalJWKSet(opts.jwks) : remote!.getKey;
  const iatWindow = opts.dpopIatWindowS ?? 60;
  let requireNonce = opts.requireDpopNonce ?? false;
  const newNonce = () => randomBytes(16).toString('base64url');
  let nonce = newNonce();
  const seenJtis = new Set<string>();
  const requests: VendorRecord[] = [];
  let base = '';

  const nonceHeaders = (): Record<string, string> => (requireNonce ? { 'DPoP-Nonce': nonce } : {});

  async function verifyAccessToken(token: string, scheme: VendorScheme): Promise<JWTPayload> {
    try {
      const { payload } = await jwtVerify(token, getKey, {
        issuer: opts.issuer,
        audience: opts.audience,
        typ: 'at+jwt',
        algorithms: ASYMMETRIC_ALGS,
        requiredClaims: ['exp', 'iat'],
      });
      return payload;
    } catch (err) {
      throw invalidToken(scheme, `access token: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  interface Checked {
    payload: JWTPayload;
    scheme: VendorScheme;
    bound: VendorBinding;
    jti?: string;
    nonceUsed?: string;
  }

  async function check(req: http.IncomingMessage, path: string, record: Partial<VendorRecord>): Promise<Checked> {
    const authorization = req.headers.authorization;
    if (!authorization) {
      throw new Refusal(`Bearer realm="vendor", DPoP algs="${ASYMMETRIC_ALGS.join(' ')}"`, 'no Authorization header');
    }
    const m = /^(\S+) +(\S+)$/.exec(authorization);
    const schemeRaw = m?.[1]?.toLowerCase();
    const scheme: VendorScheme | undefined = schemeRaw === 'bearer' ? 'Bearer' : schemeRaw === 'dpop' ? 'DPoP' : undefined;
    if (!m || !scheme) throw new Refusal('Bearer realm="vendor"', `unsupported Authorization: ${authorization.split(' ')[0]}`);
    record.scheme = scheme;
    const token = m[2]!;
    const payload = await verifyAccessToken(token, scheme);
    record.clientId = typeof payload.client_id === 'string' ? payload.client_id : undefined;
    const cnf = (typeof payload.cnf === 'object' && payload.cnf !== null ? payload.cnf : {}) as { jkt?: unknown; 'x5t#S256'?: unknown };

    let jti: string | undefined;
    let nonceUsed: string | undefined;
    if (scheme === 'Bearer') {
      if (cnf.jkt !== undefined) throw invalidToken('Bearer', 'DPoP-bound access token presented with the Bearer scheme');
    } else {
      const proofHeader = req.headers.dpop;
      if (typeof proofHeader !== 'string' || !proofHeader) throw invalidProof('no DPoP proof header');
      if (proofHeader.includes(',')) throw invalidProof('more than one DPoP proof');
      let header;
      try {
        header = decodeProtectedHeader(proofHeader);
      } catch {
        throw invalidProof('DPoP proof is not a JWS');
      }
      if (header.typ !== 'dpop+jwt') throw invalidProof('DPoP proof typ must be dpop+jwt');
      if (!header.alg || !ASYMMETRIC_ALGS.includes(header.alg)) throw invalidProof(`DPoP proof alg ${String(header.alg)} not allowed`);
      const jwk = header.jwk;
      if (!jwk || typeof jwk !== 'object') throw invalidProof('DPoP proof has no jwk header');
      if (PRIVATE_JWK_MEMBERS.some((k) => k in jwk)) throw invalidProof('DPoP proof jwk contains private key material');
      let proof: JWTPayload;
      try {
        ({ payload: proof } = await jwtVerify(proofHeader, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ASYMMETRIC_ALGS }));
      } catch (err) {
        throw invalidProof(`DPoP proof: ${err instanceof Error ? err.message : String(err)}`);
      }
      jti = typeof proof.jti === 'string' && proof.jti ? proof.jti : undefined;
      nonceUsed = typeof proof.nonce === 'string' ? proof.nonce : undefined;
      record.jti = jti;
      record.nonceUsed = nonceUsed;
      if (!jti) throw invalidProof('DPoP proof has no jti');
      if (typeof proof.iat !== 'number') throw invalidProof('DPoP proof has no iat');
      if (Math.abs(Date.now() / 1000 - proof.iat) > iatWindow) throw invalidProof('DPoP proof iat is outside the acceptable window');
      if (proof.htm !== req.method) throw invalidProof(`DPoP proof htm mismatch (${String(proof.htm)} for ${req.method})`);
      const expectedHtu = normalizedUrl(`${(opts.externalBase ?? base).replace(/\/+$/, '')}${path}`);
      const actualHtu = typeof proof.htu === 'string' ? normalizedUrl(proof.htu) : undefined;
      if (!actualHtu || actualHtu !== expectedHtu) throw invalidProof(`DPoP proof htu mismatch (${String(proof.htu)}, expected ${expectedHtu})`);
      if (proof.ath !== b64urlSha256(token)) throw invalidProof('DPoP proof ath does not match the access token');
      if (requireNonce && nonceUsed !== nonce) {
        const reason = nonceUsed === undefined ? 'Resource server requires nonce in DPoP proof' : 'DPoP proof nonce is not the current one';
        throw new Refusal(`DPoP error="use_dpop_nonce", error_description=${quote(reason)}`, reason, { 'DPoP-Nonce': nonce });
      }
      if (seenJtis.has(jti)) throw invalidProof('DPoP proof jti replayed');
      seenJtis.add(jti);
      if (typeof cnf.jkt !== 'string') throw invalidToken('DPoP', 'access token is not DPoP-bound (no cnf.jkt)');
      if (cnf.jkt !== (await calculateJwkThumbprint(jwk))) throw invalidToken('DPoP', 'cnf.jkt does not match the DPoP proof key');
    }

    const certDer = peerCertificateDer(req.socket);
    if (cnf['x5t#S256'] !== undefined) {
      if (!certDer) throw invalidToken(scheme, 'certificate-bound access token but no TLS client certificate');
      if (b64urlSha256(certDer) !== cnf['x5t#S256']) throw invalidToken(scheme, 'TLS client certificate does not match cnf x5t#S256');
    }
    const bound: VendorBinding = cnf.jkt !== undefined ? 'jkt' : cnf['x5t#S256'] !== undefined ? 'x5t' : null;
    return { payload, scheme, bound, jti, nonceUsed };
  }

  const redactedHeaders = (req: http.IncomingMessage): VendorRecord['headers'] => {
    const out: VendorRecord['headers'] = { ...req.headers };
    if (typeof out.authorization === 'string') out.authorization = `${out.authorization.split(' ')[0]} <redacted>`;
    if (out.dpop !== undefined) out.dpop = '<proof>';
    return out;
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const target = req.url ?? '/';
    const q = target.search(/[?#]/);
    const path = q === -1 ? target : target.slice(0, q);
    const query = q !== -1 && target[q] === '?' ? target.slice(q + 1).split('#')[0] : undefined;
    const record: Partial<VendorRecord> = {};

    // Read the whole body first: answering early would leave a client mid-upload.
    let bodyBytes = 0;
    let tooLarge = false;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      bodyBytes += chunk.length;
      if (bodyBytes > BODY_LIMIT) tooLarge = true;
    }

    const send = (status: number, body: Record<string, unknown>, headers: Record<string, string>) => {
      const json = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json), 'cache-control': 'no-store', ...nonceHeaders(), ...headers });
      res.end(json);
      requests.push({
        method: req.method ?? '',
        path,
        ...(query !== undefined ? { query } : {}),
        status,
        ...(typeof body.reason === 'string' ? { reason: body.reason } : {}),
        ...(record.scheme ? { scheme: record.scheme } : {}),
        ...(record.jti ? { jti: record.jti } : {}),
        ...(record.nonceUsed !== undefined ? { nonceUsed: record.nonceUsed } : {}),
        ...(record.clientId ? { clientId: record.clientId } : {}),
        ...(record.bound !== undefined ? { bound: record.bound } : {}),
        hadClientCert: peerCertificateDer(req.socket) !== undefined,
        bodyBytes,
        headers: redactedHeaders(req),
      });
    };

    if (tooLarge) return send(413, { ok: false, reason: 'request body too large' }, {});
    try {
      const ok = await check(req, path, record);
      record.bound = ok.bound;
      send(200, {
        ok: true,
        sub: ok.payload.sub,
        client_id: ok.payload.client_id,
        scope: ok.payload.scope,
        scheme: ok.scheme,
        path,
        method: req.method,
        bound: ok.bound,
        bodyBytes,
      }, {});
    } catch (err) {
      if (err instanceof Refusal) send(401, { ok: false, reason: err.reason }, { 'WWW-Authenticate': err.challenge, ...err.extraHeaders });
      else send(500, { ok: false, reason: `vendor error: ${err instanceof Error ? err.message : String(err)}` }, {});
    }
  };

  const listener: http.RequestListener = (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(err));
      else res.destroy();
    });
  };
  const server: http.Server | https.Server = opts.tls
    ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key, ca: opts.tls.ca, requestCert: true, rejectUnauthorized: false }, listener)
    : http.createServer(listener);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  base = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;

  return {
    url: base,
    requests,
    currentNonce: () => nonce,
    rotateDpopNonce: () => (nonce = newNonce()),
    setRequireDpopNonce(required) {
      requireNonce = required;
    },
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await remote?.close();
    },
  };
}
