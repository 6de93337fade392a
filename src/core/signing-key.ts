/**
 * Private keys the sidecar signs with (private_key_jwt client assertions, jwt-bearer grant assertions, DPoP proofs),
 * read from PKCS#8 PEM or a JWK, with the JWS algorithm they allow and their RFC 7638 thumbprint. Pure apart from
 * node:crypto; a key file's text never appears in an error.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';

export const JWS_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'] as const;
export type JwsAlg = (typeof JWS_ALGS)[number];

export interface SigningKey {
  readonly privateKey: KeyObject;
  readonly alg: JwsAlg;
  /** JWS `kid`, when configured. */
  readonly keyId: string | undefined;
  /** The public half as a JWK (only public members), for a DPoP proof's `jwk` header. */
  readonly publicJwk: Readonly<Record<string, string>>;
  /** RFC 7638 SHA-256 JWK thumbprint, base64url: DPoP's `jkt`, and part of the credential identity. */
  readonly thumbprint: string;
}

/** RFC 7638 §3.2: only the required members, in lexicographic order. */
const THUMBPRINT_MEMBERS: Readonly<Record<string, readonly string[]>> = {
  RSA: ['e', 'kty', 'n'],
  EC: ['crv', 'kty', 'x', 'y'],
  OKP: ['crv', 'kty', 'x'],
};

export function jwkThumbprint(jwk: Readonly<Record<string, unknown>>): string {
  const members = THUMBPRINT_MEMBERS[String(jwk['kty'])] ?? [];
  const canonical = `{${members.map((m) => `${JSON.stringify(m)}:${JSON.stringify(jwk[m])}`).join(',')}}`;
  return createHash('sha256').update(canonical).digest('base64url');
}

/** The algorithms a key can sign with; the first is the default. */
function algsFor(key: KeyObject): readonly JwsAlg[] {
  const type = key.asymmetricKeyType;
  if (type === 'rsa') return ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
  if (type === 'rsa-pss') return ['PS256', 'PS384', 'PS512'];
  if (type === 'ed25519') return ['EdDSA'];
  if (type === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return ['ES256'];
    if (curve === 'secp384r1') return ['ES384'];
  }
  return [];
}

export type KeyParse = { ok: true; key: SigningKey } | { ok: false; problem: string };

/**
 * `text` is a PKCS#8 (or PKCS#1 / SEC1) PEM, or a private JWK as JSON. `alg`: the configured `signingAlg`, else the
 * key's default. Problems name the key type, never the key.
 */
export function parseSigningKey(text: string, opts: { alg?: JwsAlg | undefined; keyId?: string | undefined } = {}): KeyParse {
  let privateKey: KeyObject;
  try {
    const trimmed = text.trim();
    privateKey = trimmed.startsWith('{')
      ? createPrivateKey({ key: JSON.parse(trimmed) as Record<string, unknown> as never, format: 'jwk' })
      : createPrivateKey(trimmed);
  } catch {
    return { ok: false, problem: 'is not a private key (expected a PKCS#8 PEM or a private JWK)' };
  }
  const allowed = algsFor(privateKey);
  const type = privateKey.asymmetricKeyType ?? 'unknown';
  const what = type === 'ec' ? `an EC ${privateKey.asymmetricKeyDetails?.namedCurve ?? ''} key` : `${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type} key`;
  if (allowed.length === 0) return { ok: false, problem: `is ${what}: use RSA (2048 bits or more), EC P-256 / P-384 or Ed25519` };
  if (privateKey.asymmetricKeyType === 'rsa' && (privateKey.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) {
    return { ok: false, problem: 'is an RSA key shorter than 2048 bits' };
  }
  const alg = opts.alg ?? (allowed[0] as JwsAlg);
  if (!allowed.includes(alg)) return { ok: false, problem: `is ${what}, which cannot sign ${alg} (use ${allowed.join(', ')})` };
  return { ok: true, key: signingKeyOf(privateKey, alg, opts.keyId) };
}

function signingKeyOf(privateKey: KeyObject, alg: JwsAlg, keyId: string | undefined): SigningKey {
  // Through PEM: exporting a freshly generated key straight to JWK can deadlock Node 20 during a GC.
  const publicPem = createPublicKey(privateKey).export({ format: 'pem', type: 'spki' });
  const jwk = createPublicKey(publicPem).export({ format: 'jwk' }) as Record<string, unknown>;
  const members = THUMBPRINT_MEMBERS[String(jwk['kty'])] ?? [];
  const publicJwk = Object.freeze(Object.fromEntries(members.map((m) => [m, String(jwk[m])])));
  return Object.freeze({ privateKey, alg, keyId, publicJwk, thumbprint: jwkThumbprint(publicJwk) });
}

const ephemeral = new Map<JwsAlg, SigningKey>();

/**
 * A key this process makes for itself (DPoP without a configured key): one per algorithm for the life of the
 * process, so a hot reload keeps the key, and with it the tokens bound to it.
 */
export function processKey(alg: JwsAlg): SigningKey {
  let key = ephemeral.get(alg);
  if (!key) {
    const pair = alg.startsWith('ES')
      ? generateKeyPairSync('ec', { namedCurve: alg === 'ES384' ? 'P-384' : 'P-256' })
      : alg === 'EdDSA'
        ? generateKeyPairSync('ed25519')
        : generateKeyPairSync('rsa', { modulusLength: 2048 });
    const pem = pair.privateKey.export({ format: 'pem', type: 'pkcs8' });
    key = signingKeyOf(createPrivateKey(pem), alg, undefined);
    ephemeral.set(alg, key);
  }
  return key;
}

/** RFC 8705 §3.1 `x5t#S256`: base64url SHA-256 of the DER certificate (the first one of a PEM chain). */
export function certificateThumbprint(pem: string): string | undefined {
  try {
    return createHash('sha256').update(new X509Certificate(pem).raw).digest('base64url');
  } catch {
    return undefined;
  }
}
