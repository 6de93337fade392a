/**
 * A route's `oauth2` block → OAuth2Auth: secrets resolved, keys parsed (their problems named by path, never shown),
 * the assertion audience fixed, and the credential identity that keys the shared store.
 */
import { isAbsolute, resolve } from 'node:path';
import { credentialIdentity, sha256Hex } from '../core/credential.js';
import { unverifiedClaims } from '../core/jwt.js';
import { certificateThumbprint, parseSigningKey, processKey, type JwsAlg } from '../core/signing-key.js';
import type { RawOAuth2 } from './auth-schema.js';
import type { SecretRef } from './primitives.js';
import type { SecretResolver } from './secrets.js';
import type { OAuth2Auth, TlsMaterial } from './types.js';

export async function buildOAuth2(
  a: RawOAuth2,
  path: string,
  r: SecretResolver,
  upstreamTls: TlsMaterial | undefined,
): Promise<OAuth2Auth> {
  const at = (key: string) => `${path}.auth.${key}`;
  const key = async (ref: SecretRef | undefined, where: string, alg: JwsAlg | undefined, keyId: string | undefined) => {
    if (ref === undefined) return undefined;
    const text = await r.get(ref, where, { literalWarning: true });
    if (text === '') return undefined;
    const parsed = parseSigningKey(text, { alg, keyId });
    if (!parsed.ok) {
      r.problems.push(`${where}: ${parsed.problem}`);
      return undefined;
    }
    return parsed.key;
  };
  const [clientId, clientSecret, tls, clientKey, refreshToken, assertionKey, dpopKey, subjectToken] = await Promise.all([
    r.get(a.clientId, at('clientId'), { literalWarning: false, use: 'credential' }),
    a.clientSecret === undefined ? undefined : r.secret(a.clientSecret, at('clientSecret'), true, 'credential'),
    r.tls(a.tls, at('tls')),
    key(a.privateKey, at('privateKey'), a.signingAlg, a.keyId),
    a.refreshToken === undefined ? undefined : r.secret(a.refreshToken, at('refreshToken'), true, 'credential'),
    key(a.assertion?.privateKey, at('assertion.privateKey'), a.assertion?.signingAlg, a.assertion?.keyId),
    key(a.dpop?.key, at('dpop.key'), a.dpop?.alg, undefined),
    // Read now (it must exist and be readable, and it names whom the token is for); read again at every token request.
    a.subjectToken === undefined ? undefined : r.get(a.subjectToken, at('subjectToken'), { use: 'credential' }),
  ]);
  const certificateThumbprintValue = tls?.cert === undefined ? undefined : certificateThumbprint(tls.cert);
  if (tls?.cert !== undefined && certificateThumbprintValue === undefined) r.problems.push(`${at('tls.cert')}: is not a PEM certificate`);
  if ((a.clientAuth === 'tls_client_auth' || a.clientAuth === 'self_signed_tls_client_auth') && certificateThumbprintValue !== undefined) {
    const upstreamCert = upstreamTls?.cert === undefined ? undefined : certificateThumbprint(upstreamTls.cert);
    if (upstreamCert !== certificateThumbprintValue) {
      r.warnings.push(
        `${at('tls.cert')}: the vendor may bind the token to this certificate (RFC 8705 §3, cnf.x5t#S256), but ${path}.upstreamTls ${upstreamCert === undefined ? 'sends no client certificate' : 'sends a different one'}: a bound token would be refused; use the same cert and key in upstreamTls`,
      );
    }
  }
  const assertion = assertionKey === undefined || a.assertion === undefined
    ? undefined
    : { key: assertionKey, issuer: a.assertion.issuer ?? clientId, subject: a.assertion.subject, audience: a.assertion.audience ?? a.tokenUrl.href };
  const seedHash = refreshToken === undefined ? undefined : sha256Hex(refreshToken.reveal());
  const dpop = a.dpop === undefined ? undefined : dpopKey ? { key: dpopKey, shared: true } : a.dpop.key === undefined ? { key: processKey(a.dpop.alg ?? 'ES256'), shared: false } : undefined;
  const assertionAudience = a.assertionAudience === undefined || a.assertionAudience === 'tokenUrl'
    ? a.tokenUrl.href
    : a.assertionAudience === 'issuer'
      ? (a.issuer ?? a.tokenUrl.origin)
      : a.assertionAudience;
  const fields = {
    grant: a.grant,
    tokenUrl: a.tokenUrl,
    clientId,
    clientSecret,
    clientAuth: a.clientAuth,
    scopes: a.scopes,
    audience: a.audience,
    resource: a.resource,
    params: a.params,
    // What else decides which token the endpoint issues, or whether the fleet may share it: the signing keys (a
    // rotated key starts a new token), the client certificate and the DPoP key (a bound token is only usable with
    // them), the first refresh token, the assertion's claims, and whom a subject token speaks for (pods of another
    // service account must never share its exchanged token; a rotated token of the same subject keeps it).
    bindings: {
      clientKey: clientKey?.thumbprint,
      assertionAudience: a.clientAuth === 'private_key_jwt' ? assertionAudience : undefined,
      certificate: certificateThumbprintValue,
      dpop: dpop?.key.thumbprint,
      refreshToken: seedHash,
      assertion: assertion && JSON.stringify([assertion.key.thumbprint, assertion.issuer, assertion.subject, assertion.audience]),
      subjectTokenType: a.subjectToken === undefined ? undefined : JSON.stringify([a.subjectTokenType, a.requestedTokenType ?? null]),
      subject: subjectToken ? subjectOf(subjectToken) : undefined,
    },
  };
  const auth: OAuth2Auth = {
    type: 'oauth2',
    grant: a.grant,
    tokenUrl: a.tokenUrl,
    clientId,
    clientSecret,
    clientAuth: a.clientAuth,
    clientKey,
    assertionAudience,
    refreshToken,
    refreshChainKey: seedHash && sha256Hex(JSON.stringify(['chain-v1', a.tokenUrl.href, clientId, seedHash])).slice(0, 32),
    assertion,
    subjectToken: a.subjectToken === undefined
      ? undefined
      : { file: absolute(r, a.subjectToken.fromFile), type: a.subjectTokenType, requestedType: a.requestedTokenType },
    scopes: a.scopes,
    audience: a.audience,
    resource: a.resource,
    params: a.params,
    headers: Object.fromEntries(Object.entries(a.headers).map(([k, v]) => [k.toLowerCase(), v])),
    tokenResponse: a.tokenResponse,
    tls,
    certificateThumbprint: certificateThumbprintValue,
    dpop,
    timeoutMs: a.timeout,
    refreshAheadRatio: a.refreshAhead,
    defaultExpiresInMs: a.defaultExpiresIn,
    maxLifetimeMs: a.maxLifetime,
    identity: credentialIdentity(fields),
  };
  return auth;
}

function absolute(r: SecretResolver, file: string): string {
  return isAbsolute(file) ? file : resolve(r.baseDir, file);
}

/**
 * Whom a subject token speaks for: a JWT's `iss` and `sub` (a projected service-account token's
 * `system:serviceaccount:NS:NAME`, stable across rotations), else the hash of the whole token. Not verified: the
 * token endpoint does that; this only keeps tokens of different subjects apart.
 */
function subjectOf(token: string): string {
  const claims = unverifiedClaims(token);
  return typeof claims?.['sub'] === 'string'
    ? sha256Hex(JSON.stringify(['jwt', claims['iss'] ?? null, claims['sub']]))
    : sha256Hex(JSON.stringify(['opaque', token]));
}
