import { createHash } from 'node:crypto';
import type { Secret } from './secret.js';

export interface CredentialFields {
  grant: string;
  tokenUrl: URL;
  clientId: string;
  clientSecret: Secret | undefined;
  clientAuth: string;
  scopes: readonly string[];
  audience: string | undefined;
  resource: string | undefined;
  params: Record<string, string>;
  /** Method- and grant-specific parts (key and certificate thumbprints, …): only the ones set enter the identity. */
  bindings?: Readonly<Record<string, string | undefined>>;
}

export const sha256Hex = (text: string) => createHash('sha256').update(text).digest('hex');

/**
 * The identity a token belongs to, as a hash: anything that changes which token the endpoint would issue (or
 * whether it would issue one) is in it, so a rotated secret or a changed scope never meets an old token, and a
 * store key reveals nothing. The secret enters only as its own hash.
 */
export function credentialIdentity(c: CredentialFields): string {
  const canonical = JSON.stringify([
    'v1',
    c.grant,
    c.tokenUrl.href,
    c.clientId,
    c.clientAuth,
    [...c.scopes].sort(),
    c.audience ?? null,
    c.resource ?? null,
    Object.entries(c.params).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    sha256Hex(c.clientSecret?.reveal() ?? ''),
    // Appended only when present, so a client_secret route keeps the identity (and the shared token) it had.
    ...Object.entries(c.bindings ?? {}).filter((e): e is [string, string] => e[1] !== undefined).sort(([a], [b]) => (a < b ? -1 : 1)),
  ]);
  return sha256Hex(canonical).slice(0, 32);
}
