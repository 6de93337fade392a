import { createHash } from 'node:crypto';
import { Secret } from './secret.js';

/** An access token and what we know of its lifetime. Times are on this process's clock. */
export interface Token {
  readonly value: Secret;
  readonly tokenType: string;
  /** When the request for it was sent: expiry counts from there, which errs on the early side (RFC 6749 §5.1). */
  readonly issuedAtMs: number;
  readonly expiresAtMs: number;
  /** First 12 hex chars of SHA-256(token): names the token in logs, metrics and compare-and-delete. */
  readonly fingerprint: string;
  readonly scope: string | undefined;
  readonly lifetimeSource: 'expires_in' | 'jwt' | 'default';
}

export function fingerprintOf(value: string): string {
  return createHash('sha256').update(value).digest('hex').slice(0, 12);
}

export function makeToken(fields: Omit<Token, 'fingerprint' | 'value'> & { value: string }): Token {
  return Object.freeze({ ...fields, value: new Secret(fields.value), fingerprint: fingerprintOf(fields.value) });
}

export function lifetimeMs(token: Token): number {
  return token.expiresAtMs - token.issuedAtMs;
}

/**
 * The token stops being served this long before its expiry: covers the request's flight time and modest clock
 * skew with the vendor, without wasting much of a short lifetime.
 */
export function expirySkewMs(token: Token): number {
  return Math.min(5_000, Math.floor(lifetimeMs(token) * 0.1));
}

/** Usable for a request that starts now (never serve an expired token). */
export function isUsable(token: Token, nowMs: number): boolean {
  return nowMs < token.expiresAtMs - expirySkewMs(token);
}

/** Past the point where a refresh is due (before jitter): `refreshAheadRatio` of the lifetime left. */
export function isDueForRefresh(token: Token, nowMs: number, refreshAheadRatio: number): boolean {
  return nowMs >= token.expiresAtMs - lifetimeMs(token) * refreshAheadRatio;
}

/**
 * When this pod refreshes in the background: between `ratio` and 1.5×`ratio` of the lifetime before expiry, at
 * random, so a fleet holding the same token does not wake at the same instant.
 */
export function jitteredRefreshAtMs(token: Token, refreshAheadRatio: number, random: () => number = Math.random): number {
  const ahead = lifetimeMs(token) * refreshAheadRatio * (1 + 0.5 * random());
  return Math.max(token.issuedAtMs, Math.round(token.expiresAtMs - ahead));
}
