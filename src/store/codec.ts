/**
 * Token ⇄ stored value. Pure. A value is versioned JSON whose outer fields (issued-at, expiry, fingerprint) are
 * readable by the Lua scripts (newer-wins, compare-and-delete); the token itself is inside, sealed when a keyring
 * is configured. The outer fields are bound to the ciphertext as AAD, so they cannot be edited without detection.
 */
import { makeToken, type Token } from '../core/token.js';
import type { Keyring, Sealed } from './crypto.js';

export const VALUE_VERSION = 1;

interface Outer {
  v: number;
  iat: number;
  exp: number;
  fp: string;
  tok?: Inner;
  enc?: Sealed;
}

interface Inner {
  t: string;
  ty: string;
  sc?: string;
  src: Token['lifetimeSource'];
}

function aad(key: string, o: Pick<Outer, 'v' | 'iat' | 'exp' | 'fp'>): string {
  return `${key}|${o.v}|${o.iat}|${o.exp}|${o.fp}`;
}

export function encodeToken(key: string, token: Token, keyring: Keyring | undefined): string {
  const inner: Inner = { t: token.value.reveal(), ty: token.tokenType, src: token.lifetimeSource, ...(token.scope ? { sc: token.scope } : {}) };
  const outer: Outer = { v: VALUE_VERSION, iat: token.issuedAtMs, exp: token.expiresAtMs, fp: token.fingerprint };
  if (keyring) outer.enc = keyring.seal(JSON.stringify(inner), aad(key, outer));
  else outer.tok = inner;
  return JSON.stringify(outer);
}

/**
 * `foreign`: sealed under a key id this pod does not have, i.e. another pod's newer key during a key rollout. Not
 * damage: the value is left alone (never deleted, never overwritten) so the pods that can read it keep sharing it.
 */
export type DecodeResult =
  | { ok: true; token: Token }
  | { ok: false; reason: 'json' | 'version' | 'shape' | 'decrypt' | 'fingerprint' | 'plaintext' | 'foreign' };

export function decodeToken(key: string, text: string, keyring: Keyring | undefined): DecodeResult {
  let outer: unknown;
  try {
    outer = JSON.parse(text);
  } catch {
    return { ok: false, reason: 'json' };
  }
  if (!isRecord(outer)) return { ok: false, reason: 'shape' };
  if (outer['v'] !== VALUE_VERSION) return { ok: false, reason: 'version' };
  const { iat, exp, fp } = outer;
  if (!isFiniteNumber(iat) || !isFiniteNumber(exp) || typeof fp !== 'string' || exp <= iat) return { ok: false, reason: 'shape' };
  let inner: unknown;
  if (keyring) {
    // With encryption on, a plaintext value is never trusted: it may have been planted.
    if (!isSealed(outer['enc'])) return { ok: false, reason: 'plaintext' };
    if (!keyring.has(outer['enc'].kid)) return { ok: false, reason: 'foreign' };
    const opened = keyring.open(outer['enc'], aad(key, { v: VALUE_VERSION, iat, exp, fp }));
    if (opened === undefined) return { ok: false, reason: 'decrypt' };
    try {
      inner = JSON.parse(opened);
    } catch {
      return { ok: false, reason: 'json' };
    }
  } else {
    inner = outer['tok'];
  }
  if (!isRecord(inner) || typeof inner['t'] !== 'string' || !/^[\x21-\x7e]+$/.test(inner['t'])) return { ok: false, reason: 'shape' };
  const src = inner['src'];
  const token = makeToken({
    value: inner['t'],
    tokenType: typeof inner['ty'] === 'string' ? inner['ty'] : 'Bearer',
    issuedAtMs: iat,
    expiresAtMs: exp,
    scope: typeof inner['sc'] === 'string' ? inner['sc'] : undefined,
    lifetimeSource: src === 'jwt' || src === 'default' ? src : 'expires_in',
  });
  if (token.fingerprint !== fp) return { ok: false, reason: 'fingerprint' };
  return { ok: true, token };
}

/**
 * A secret the fleet shares beside a token (the newest refresh token): `{ v, s }`, or `{ v, enc }` sealed with the
 * key name as AAD, so a value cannot be moved to another key. Undefined when it cannot be read here.
 */
export function encodeSecret(key: string, value: string, keyring: Keyring | undefined): string {
  return JSON.stringify(keyring ? { v: VALUE_VERSION, enc: keyring.seal(value, `${key}|secret`) } : { v: VALUE_VERSION, s: value });
}

export function decodeSecret(key: string, text: string, keyring: Keyring | undefined): string | undefined {
  let outer: unknown;
  try {
    outer = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isRecord(outer) || outer['v'] !== VALUE_VERSION) return undefined;
  if (!keyring) return typeof outer['s'] === 'string' ? outer['s'] : undefined;
  return isSealed(outer['enc']) ? keyring.open(outer['enc'], `${key}|secret`) : undefined;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isFiniteNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

function isSealed(v: unknown): v is Sealed {
  return isRecord(v) && typeof v['kid'] === 'string' && typeof v['iv'] === 'string' && typeof v['ct'] === 'string' && typeof v['tag'] === 'string';
}
