/**
 * The token request for a route, pure apart from randomness: the grant's form fields (RFC 6749 §4.4 client
 * credentials, §6 refresh, RFC 7523 §2.1 jwt-bearer, RFC 8693 token exchange), the client authentication
 * (§2.3.1 Basic or form, RFC 7523 §2.2 private_key_jwt, RFC 8705 §2 mTLS, or none) and every spelling of a
 * credential it carries, so none can come back in an error text.
 */
import { randomBytes } from 'node:crypto';
import { encodeHeader, signCompact } from '../core/jws.js';
import type { SigningKey } from '../core/signing-key.js';
import type { OAuth2Auth } from '../config/types.js';
import { formEncode, sentForms } from './redact.js';

export interface TokenRequest {
  headers: Record<string, string>;
  body: string;
  /** Every spelling of a credential this request carries: redacted from anything the answer brings back. */
  sent: string[];
}

/** What changes between two requests of the same route: the clock, the newest refresh token, the subject token. */
export interface TokenRequestInput {
  nowMs: number;
  refreshToken?: string | undefined;
  subjectToken?: string | undefined;
}

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** RFC 7523 §3: `exp` must bound the assertion's use; a minute is what FAPI 2.0 and most vendors accept. */
const ASSERTION_LIFETIME_S = 60;

export function buildTokenRequest(auth: OAuth2Auth, input: TokenRequestInput): TokenRequest {
  const form = new URLSearchParams();
  const sent: string[] = [];
  grantFields(auth, input, form, sent);
  if (auth.scopes.length > 0) form.set('scope', auth.scopes.join(' '));
  if (auth.audience !== undefined) form.set('audience', auth.audience);
  if (auth.resource !== undefined) form.set('resource', auth.resource);
  for (const [k, v] of Object.entries(auth.params)) form.set(k, v);
  const headers: Record<string, string> = {
    ...auth.headers,
    'content-type': 'application/x-www-form-urlencoded',
    accept: 'application/json',
  };
  switch (auth.clientAuth) {
    case 'client_secret_basic': {
      const secret = auth.clientSecret?.reveal() ?? '';
      const basic = `${formEncode(auth.clientId)}:${formEncode(secret)}`;
      headers['authorization'] = `Basic ${Buffer.from(basic).toString('base64')}`;
      sent.push(...sentForms(secret, [basic, `${auth.clientId}:${secret}`]));
      break;
    }
    case 'client_secret_post': {
      const secret = auth.clientSecret?.reveal() ?? '';
      form.set('client_id', auth.clientId);
      form.set('client_secret', secret);
      sent.push(...sentForms(secret));
      break;
    }
    case 'private_key_jwt': {
      // iss = sub = client_id, one aud, a fresh jti: RFC 7523 §3 and OIDC Core §9.
      const assertion = signAssertion(auth.clientKey as SigningKey, { iss: auth.clientId, sub: auth.clientId, aud: auth.assertionAudience }, input.nowMs);
      form.set('client_id', auth.clientId);
      form.set('client_assertion_type', CLIENT_ASSERTION_TYPE);
      form.set('client_assertion', assertion);
      sent.push(...sentForms(assertion));
      break;
    }
    default:
      // tls_client_auth, self_signed_tls_client_auth (the certificate is on the connection) and none.
      form.set('client_id', auth.clientId);
  }
  return { headers, body: form.toString(), sent: [...new Set(sent)].sort((a, b) => b.length - a.length) };
}

function grantFields(auth: OAuth2Auth, input: TokenRequestInput, form: URLSearchParams, sent: string[]): void {
  switch (auth.grant) {
    case 'client_credentials':
      form.set('grant_type', 'client_credentials');
      return;
    case 'refresh_token': {
      const token = input.refreshToken ?? auth.refreshToken?.reveal() ?? '';
      form.set('grant_type', 'refresh_token');
      form.set('refresh_token', token);
      sent.push(...sentForms(token));
      return;
    }
    case 'jwt_bearer': {
      const a = auth.assertion;
      if (!a) throw new Error('jwt_bearer without an assertion');
      const assertion = signAssertion(a.key, { iss: a.issuer, sub: a.subject, aud: a.audience }, input.nowMs);
      form.set('grant_type', JWT_BEARER);
      form.set('assertion', assertion);
      sent.push(...sentForms(assertion));
      return;
    }
    case 'token_exchange': {
      const s = auth.subjectToken;
      if (!s) throw new Error('token_exchange without a subject token');
      const token = input.subjectToken ?? '';
      form.set('grant_type', TOKEN_EXCHANGE);
      form.set('subject_token', token);
      form.set('subject_token_type', s.type);
      if (s.requestedType !== undefined) form.set('requested_token_type', s.requestedType);
      sent.push(...sentForms(token));
      return;
    }
  }
}

const assertionHeaders = new WeakMap<SigningKey, string>();

export function signAssertion(key: SigningKey, claims: { iss: string; sub: string; aud: string }, nowMs: number): string {
  let header = assertionHeaders.get(key);
  if (header === undefined) {
    header = encodeHeader({ alg: key.alg, typ: 'JWT', ...(key.keyId === undefined ? {} : { kid: key.keyId }) });
    assertionHeaders.set(key, header);
  }
  const iat = Math.floor(nowMs / 1000);
  return signCompact(key, header, { ...claims, jti: randomBytes(16).toString('base64url'), iat, exp: iat + ASSERTION_LIFETIME_S });
}
