/**
 * DPoP proofs (RFC 9449 §4) and the server nonces (§8, §9) that go with them. A proof is a JWS made fresh for every
 * request: `typ dpop+jwt`, the public `jwk`, `htm`, `htu` (no query, no fragment: §4.2), `iat`, a unique `jti`, the
 * `nonce` the server last gave, and `ath` (hash of the access token) towards resource servers.
 */
import { createHash, randomUUID } from 'node:crypto';
import { encodeHeader, signCompact } from '../core/jws.js';
import type { SigningKey } from '../core/signing-key.js';

const headers = new WeakMap<SigningKey, string>();

export interface ProofFor {
  method: string;
  /** The target: scheme, authority and path; a query or fragment is dropped. */
  url: string;
  nowMs: number;
  nonce?: string | undefined;
  /** On resource requests: `accessTokenHash` of the token the proof goes with (computed once per token). */
  ath?: string | undefined;
}

export function dpopProof(key: SigningKey, p: ProofFor): string {
  let header = headers.get(key);
  if (header === undefined) {
    header = encodeHeader({ typ: 'dpop+jwt', alg: key.alg, jwk: key.publicJwk });
    headers.set(key, header);
  }
  return signCompact(key, header, {
    // §4.2 allows a version 4 UUID; Node draws them from a cached entropy pool (randomBytes(16) per proof cost ~6 µs).
    jti: randomUUID(),
    htm: p.method,
    htu: htuOf(p.url),
    iat: Math.floor(p.nowMs / 1000),
    ...(p.nonce === undefined ? {} : { nonce: p.nonce }),
    ...(p.ath === undefined ? {} : { ath: p.ath }),
  });
}

/** §4.2: `htu` is the target URI without query and fragment. */
export function htuOf(url: string): string {
  const cut = url.search(/[?#]/);
  return cut === -1 ? url : url.slice(0, cut);
}

/** §4.2 `ath`: base64url(SHA-256(ASCII access token)). */
export function accessTokenHash(token: string): string {
  return createHash('sha256').update(token, 'ascii').digest('base64url');
}

/** DPoP-Nonce values allowed by §8.1: NQCHAR (%x21 / %x23-5B / %x5D-7E), bounded. */
const NONCE = /^[\x21\x23-\x5b\x5d-\x7e]{1,512}$/;

/** The newest nonce each server gave (by origin), bounded so a hostile server cannot grow it. */
export class NonceBook {
  readonly #byOrigin = new Map<string, string>();

  constructor(private readonly maxOrigins = 100) {}

  get(origin: string): string | undefined {
    return this.#byOrigin.get(origin);
  }

  /** Keep the `DPoP-Nonce` an answer carried; true when it was a new one. */
  note(origin: string, header: string | string[] | undefined): boolean {
    const nonce = Array.isArray(header) ? header[0] : header;
    if (nonce === undefined || !NONCE.test(nonce) || this.#byOrigin.get(origin) === nonce) return false;
    this.#byOrigin.delete(origin);
    if (this.#byOrigin.size >= this.maxOrigins) this.#byOrigin.delete(this.#byOrigin.keys().next().value as string);
    this.#byOrigin.set(origin, nonce);
    return true;
  }
}

/** §9: a resource server asks for a (new) nonce with `401` and `WWW-Authenticate: DPoP error="use_dpop_nonce"`. */
export function asksForNonce(wwwAuthenticate: string | undefined): boolean {
  return wwwAuthenticate !== undefined && /(^|,)\s*DPoP\b[^]*\berror\s*=\s*"?use_dpop_nonce"?/i.test(wwwAuthenticate);
}
