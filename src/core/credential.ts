import { createHash } from 'node:crypto';
import type { Secret } from './secret.js';

export interface CredentialFields {
  grant: string;
  tokenUrl: URL;
  clientId: string;
  clientSecret: Secret;
  clientAuth: string;
  scopes: readonly string[];
  audience: string | undefined;
  resource: URL | undefined;
  params: Record<string, string>;
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

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
    c.resource?.href ?? null,
    Object.entries(c.params).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    sha256(c.clientSecret.reveal()),
  ]);
  return sha256(canonical).slice(0, 32);
}
