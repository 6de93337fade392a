/** The `auth` block of a route: OAuth 2.0 (client authentication methods, grants, DPoP, vendor quirks) or a static value. */
import { z } from 'zod';
import { JWS_ALGS } from '../core/signing-key.js';
import { DURATION_RANGES_MS, durationIn, httpUrl, percent, secretRef, tlsFiles } from './primitives.js';

/** Form fields the token request sets itself, and the setting that controls each. */
const RESERVED_PARAMS: Readonly<Record<string, string>> = {
  grant_type: 'auth.grant',
  client_id: 'auth.clientId',
  client_secret: 'auth.clientSecret (sent as auth.clientAuth says)',
  client_assertion: 'auth.privateKey (clientAuth: private_key_jwt)',
  client_assertion_type: 'auth.clientAuth',
  scope: 'auth.scopes',
  audience: 'auth.audience',
  resource: 'auth.resource',
  refresh_token: 'auth.refreshToken (grant: refresh_token)',
  assertion: 'auth.assertion (grant: jwt_bearer)',
  subject_token: 'auth.subjectToken (grant: token_exchange)',
  subject_token_type: 'auth.subjectTokenType',
  requested_token_type: 'auth.requestedTokenType',
  actor_token: 'auth.grant',
  actor_token_type: 'auth.grant',
};

const params = z.record(z.string(), z.string()).superRefine((value, ctx) => {
  for (const key of Object.keys(value)) {
    // Case-insensitively: some token endpoints read form fields that way.
    const setting = RESERVED_PARAMS[key.toLowerCase()];
    if (setting !== undefined) ctx.addIssue({ code: 'custom', path: [key], message: `reserved; the sidecar sets it from ${setting}` });
  }
});

/** Headers the token request sets itself (or that frame it): never taken from `auth.headers`. */
const RESERVED_TOKEN_HEADERS = new Set([
  'authorization', 'dpop', 'content-type', 'content-length', 'host', 'connection', 'keep-alive', 'transfer-encoding',
  'te', 'trailer', 'upgrade', 'expect', 'proxy-authorization', 'proxy-connection',
]);

const tokenHeaders = z
  .record(z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'not a valid header name'), z.string().regex(/^[\t\x20-\x7e]*$/, 'must be printable ASCII'))
  .superRefine((value, ctx) => {
    for (const key of Object.keys(value)) {
      if (RESERVED_TOKEN_HEADERS.has(key.toLowerCase())) ctx.addIssue({ code: 'custom', path: [key], message: 'set by the sidecar; cannot be configured' });
    }
  });

export const GRANTS = ['client_credentials', 'refresh_token', 'jwt_bearer', 'token_exchange'] as const;
export const CLIENT_AUTH_METHODS = [
  'client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth', 'none',
] as const;
const SECRET_METHODS: readonly string[] = ['client_secret_basic', 'client_secret_post'];
const TLS_METHODS: readonly string[] = ['tls_client_auth', 'self_signed_tls_client_auth'];

const signingAlg = z.enum(JWS_ALGS, { error: `expected one of ${JWS_ALGS.join(', ')}` });
const keyIdText = z.string().regex(/^[\x21-\x7e]{1,128}$/, 'printable ASCII without spaces, at most 128 characters');
/** A dotted path into the token response (`data.accessToken`): letters, digits, `_`, `-` per segment. */
const fieldPath = z
  .string()
  .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,7}$/, 'a field name or a dotted path such as data.accessToken')
  .transform((p) => p.split('.'));

export const EXPIRY_FORMATS = ['seconds', 'milliseconds', 'unix-seconds', 'unix-milliseconds', 'date'] as const;

const tokenResponse = z.strictObject({
  accessToken: fieldPath.default(['access_token']),
  expiry: fieldPath.default(['expires_in']),
  /** `seconds`/`milliseconds`: a lifetime; `unix-*` and `date` (RFC 3339): the absolute expiry. */
  expiryFormat: z.enum(EXPIRY_FORMATS, { error: `expected one of ${EXPIRY_FORMATS.join(', ')}` }).default('seconds'),
});

/** RFC 7523 §2.1: the assertion the jwt-bearer grant sends, signed here from a key file. */
const assertion = z.strictObject({
  privateKey: secretRef,
  keyId: keyIdText.optional(),
  signingAlg: signingAlg.optional(),
  /** `iss` (default: the client id). */
  issuer: z.string().min(1).optional(),
  /** `sub`: whom the token is for. */
  subject: z.string().min(1),
  /** `aud` (default: the token URL). */
  audience: z.string().min(1).optional(),
});

const dpop = z.strictObject({
  /** Shared by the fleet (one Secret in every pod): one token per fleet. Without it each pod makes its own key. */
  key: secretRef.optional(),
  alg: signingAlg.optional(),
});

const resourceUrl = httpUrl({ allowQuery: true });

const oauth2 = z
  .strictObject({
    type: z.literal('oauth2'),
    grant: z.enum(GRANTS, { error: `expected one of ${GRANTS.join(', ')}` }).default('client_credentials'),
    tokenUrl: httpUrl({ allowQuery: true }),
    clientId: secretRef,
    clientSecret: secretRef.optional(),
    clientAuth: z.enum(CLIENT_AUTH_METHODS, { error: `expected one of ${CLIENT_AUTH_METHODS.join(', ')}` }).default('client_secret_basic'),
    /** private_key_jwt (RFC 7523 §2.2): the key that signs the client assertion. */
    privateKey: secretRef.optional(),
    keyId: keyIdText.optional(),
    signingAlg: signingAlg.optional(),
    /** The assertion's single `aud`: the token URL (OIDC Core §9), the issuer (FAPI 2.0), or a URL the vendor names. */
    assertionAudience: z.string().min(1).optional(),
    issuer: z.string().min(1).optional(),
    refreshToken: secretRef.optional(),
    assertion: assertion.optional(),
    subjectToken: z.strictObject({ fromFile: z.string().min(1) }, { error: 'expected { fromFile: PATH } (re-read at every token request)' }).optional(),
    subjectTokenType: z.string().min(1).default('urn:ietf:params:oauth:token-type:jwt'),
    requestedTokenType: z.string().min(1).optional(),
    scopes: z.array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'not a valid scope token (RFC 6749 §3.3)')).default([]),
    audience: z.string().min(1).optional(),
    /** RFC 8707: sent exactly as written (a URL parser would add a trailing slash some servers compare exactly). */
    resource: z
      .string({ error: 'expected a URL' })
      .superRefine((text, ctx) => {
        for (const issue of resourceUrl.safeParse(text).error?.issues ?? []) ctx.addIssue({ code: 'custom', message: issue.message });
      })
      .optional(),
    params: params.default({}),
    headers: tokenHeaders.default({}),
    tokenResponse: tokenResponse.default({ accessToken: ['access_token'], expiry: ['expires_in'], expiryFormat: 'seconds' }),
    tls: tlsFiles.optional(),
    dpop: dpop.optional(),
    timeout: durationIn(DURATION_RANGES_MS.tokenTimeout).default(10_000),
    refreshAhead: percent.default(0.2),
    /** Lifetime assumed when the response has no usable expires_in and the token is not a JWT. */
    defaultExpiresIn: durationIn(DURATION_RANGES_MS.defaultExpiresIn).default(300_000),
    /** Upper bound on any lifetime, whatever the response says. */
    maxLifetime: durationIn(DURATION_RANGES_MS.maxLifetime).default(86_400_000),
  })
  .superRefine((a, ctx) => {
    const problem = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    const method = a.clientAuth;
    const usesSecret = SECRET_METHODS.includes(method);
    if (usesSecret && a.clientSecret === undefined) problem('clientSecret', `required with clientAuth: ${method}`);
    if (!usesSecret && a.clientSecret !== undefined) problem('clientSecret', `not used with clientAuth: ${method} (remove it)`);
    if (method === 'private_key_jwt') {
      if (a.privateKey === undefined) problem('privateKey', 'required with clientAuth: private_key_jwt (a PKCS#8 PEM or JWK file)');
      if (a.assertionAudience === 'issuer' && a.issuer === undefined) problem('issuer', 'required with assertionAudience: issuer');
      if (a.assertionAudience !== undefined && !['tokenUrl', 'issuer'].includes(a.assertionAudience) && !URL.canParse(a.assertionAudience)) {
        problem('assertionAudience', 'expected tokenUrl, issuer or a URL');
      }
    } else {
      for (const key of ['privateKey', 'keyId', 'signingAlg', 'assertionAudience'] as const) {
        if (a[key] !== undefined) problem(key, `only used with clientAuth: private_key_jwt (clientAuth is ${method})`);
      }
    }
    if (TLS_METHODS.includes(method) && (a.tls?.cert === undefined || a.tls.key === undefined)) {
      problem('tls', `clientAuth: ${method} needs tls.cert and tls.key (the client certificate, RFC 8705 §2)`);
    }
    const grantNeeds = { refresh_token: 'refreshToken', jwt_bearer: 'assertion', token_exchange: 'subjectToken' } as const;
    for (const [grant, key] of Object.entries(grantNeeds)) {
      const has = a[key as (typeof grantNeeds)[keyof typeof grantNeeds]] !== undefined;
      if (a.grant === grant && !has) problem(key, `required with grant: ${grant}`);
      if (a.grant !== grant && has) problem(key, `only used with grant: ${grant} (grant is ${a.grant})`);
    }
  });

const staticAuth = z.strictObject({
  type: z.literal('static'),
  value: secretRef,
});

export const auth = z.discriminatedUnion('type', [oauth2, staticAuth], { error: 'auth.type must be oauth2 or static' });
export type RawOAuth2 = z.output<typeof oauth2>;
