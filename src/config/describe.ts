/** What `token ROUTE` and `/v1/routes` say about a route's OAuth setup: names and thumbprints, never a secret. */
import type { OAuth2Auth } from './types.js';

export interface AuthSummary {
  grant: OAuth2Auth['grant'];
  clientAuth: OAuth2Auth['clientAuth'];
  tokenUrl: string;
  /** private_key_jwt: the assertion's `aud`, the key's `kid` and RFC 7638 thumbprint. */
  clientAssertion: { audience: string; keyId: string | null; alg: string; thumbprint: string } | null;
  /** RFC 8705 `x5t#S256` of the client certificate on the token request. */
  certificateThumbprint: string | null;
  /** RFC 9449: the proof key's `jkt`; `shared: false` means a key of this process, so a token of this pod only. */
  dpop: { jkt: string; alg: string; shared: boolean } | null;
}

export function authSummary(auth: OAuth2Auth): AuthSummary {
  const key = auth.clientKey;
  return {
    grant: auth.grant,
    clientAuth: auth.clientAuth,
    tokenUrl: auth.tokenUrl.origin + auth.tokenUrl.pathname,
    clientAssertion: key ? { audience: auth.assertionAudience, keyId: key.keyId ?? null, alg: key.alg, thumbprint: key.thumbprint } : null,
    certificateThumbprint: auth.certificateThumbprint ?? null,
    dpop: auth.dpop ? { jkt: auth.dpop.key.thumbprint, alg: auth.dpop.key.alg, shared: auth.dpop.shared } : null,
  };
}
