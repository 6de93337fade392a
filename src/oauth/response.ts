/**
 * Pure parsing of token endpoint answers (RFC 6749 §5.1 success, §5.2 error). Anything odd about the lifetime
 * degrades to a bounded one; nothing here can produce an unbounded or NaN expiry.
 */
import { TokenEndpointError } from '../core/errors.js';
import { unverifiedClaims } from '../core/jwt.js';
import { makeToken, type Token } from '../core/token.js';
import { redact } from './redact.js';
import type { TokenResponseShape } from '../config/types.js';

export interface TokenHttpResponse {
  status: number;
  contentType: string | undefined;
  retryAfter: string | undefined;
  body: string;
}

export interface ParseContext {
  route: string;
  /** When the token request was sent. */
  requestedAtMs: number;
  nowMs: number;
  defaultExpiresInMs: number;
  maxLifetimeMs: number;
  /** Strings that must never be echoed into an error: every spelling of a credential the request carried. */
  redact: readonly string[];
  /** Where the token and its expiry are (vendor quirks); default: RFC 6749 §5.1 names, expires_in in seconds. */
  shape?: TokenResponseShape | undefined;
  /** The request carried a DPoP proof: token_type DPoP is expected (RFC 9449 §5), Bearer is accepted as unbound. */
  dpop?: boolean | undefined;
}

const STANDARD_SHAPE: TokenResponseShape = { accessToken: ['access_token'], expiry: ['expires_in'], expiryFormat: 'seconds' };

const MIN_LIFETIME_MS = 1_000;
const MAX_RETRY_AFTER_MS = 3_600_000;

/** RFC 6749 Appendix A.12: access-token = 1*VSCHAR. Space is excluded too: it would break the header syntax. */
const ACCESS_TOKEN = /^[\x21-\x7e]+$/;

/** The token of an answer (RFC 6749 §5.1); its refresh token, if any, is read by refreshTokenIn (§6). */
export function parseTokenResponse(res: TokenHttpResponse, ctx: ParseContext): Token {
  const json = parseJson(res.body);
  if (res.status !== 200) throw errorFromResponse(res, json, ctx);
  if (json === undefined || typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new TokenEndpointError('unavailable', `token endpoint answered 200 with ${describeBody(res)}, not a JSON object`, {
      route: ctx.route,
      httpStatus: 200,
    });
  }
  const body = json as Record<string, unknown>;
  const shape = ctx.shape ?? STANDARD_SHAPE;
  const value = at(body, shape.accessToken);
  if (typeof value !== 'string' || !ACCESS_TOKEN.test(value)) {
    throw new TokenEndpointError('unavailable', `token response has no valid ${shape.accessToken.join('.')} (RFC 6749 §5.1)`, {
      route: ctx.route,
      httpStatus: 200,
    });
  }
  // token_type is required by §5.1, but several vendors omit it; "bearer" is matched case-insensitively (§7.1).
  const rawType = body['token_type'];
  const type = typeof rawType === 'string' ? rawType.toLowerCase() : rawType;
  if (type !== undefined && type !== 'bearer' && !(ctx.dpop && type === 'dpop')) {
    const supported = ctx.dpop ? 'DPoP or Bearer' : 'only Bearer (DPoP needs auth.dpop)';
    throw new TokenEndpointError('unavailable', `unsupported token_type ${JSON.stringify(sanitize(String(rawType), ctx.redact))}; ${supported} is supported`, {
      route: ctx.route,
      httpStatus: 200,
    });
  }
  const scope = typeof body['scope'] === 'string' ? body['scope'] : undefined;
  const { expiresAtMs, source } = lifetime(expiresInSecondsOf(at(body, shape.expiry), shape, ctx.requestedAtMs), value, ctx);
  return makeToken({
    value,
    tokenType: type === 'dpop' ? 'DPoP' : 'Bearer',
    issuedAtMs: ctx.requestedAtMs,
    expiresAtMs,
    scope,
    lifetimeSource: source,
  });
}

/** The `refresh_token` of a JSON answer, if it has a well-formed one. */
export function refreshTokenIn(body: string): string | undefined {
  const json = parseJson(body);
  const value = typeof json === 'object' && json !== null ? (json as Record<string, unknown>)['refresh_token'] : undefined;
  return typeof value === 'string' && ACCESS_TOKEN.test(value) ? value : undefined;
}

/** `data.accessToken` → body.data.accessToken, own properties only. */
function at(body: Record<string, unknown>, path: readonly string[]): unknown {
  let node: unknown = body;
  for (const part of path) {
    if (typeof node !== 'object' || node === null || Array.isArray(node) || !Object.hasOwn(node, part)) return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}

/** The configured expiry field as a lifetime in seconds from the request (undefined: not usable). */
function expiresInSecondsOf(raw: unknown, shape: TokenResponseShape, requestedAtMs: number): unknown {
  switch (shape.expiryFormat) {
    case 'seconds':
      return raw;
    case 'milliseconds': {
      const ms = expiresInSeconds(raw);
      return ms === undefined ? undefined : ms / 1000;
    }
    case 'unix-seconds':
    case 'unix-milliseconds': {
      const n = expiresInSeconds(raw, 16);
      if (n === undefined) return undefined;
      return leftS((shape.expiryFormat === 'unix-seconds' ? n * 1000 : n) - requestedAtMs);
    }
    case 'date': {
      // RFC 3339 with an explicit offset only: Date.parse alone takes "3600" (the year) and local times.
      const atMs = typeof raw === 'string' && RFC3339.test(raw) ? Date.parse(raw) : NaN;
      return Number.isNaN(atMs) ? undefined : leftS(atMs - requestedAtMs);
    }
  }
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

/** An absolute expiry as seconds left; one already past stays positive but tiny, so it is refused as expired. */
function leftS(ms: number): number {
  return Math.max(ms / 1000, Number.MIN_VALUE);
}

/** expires_in as seconds, if it is a positive finite number (or a string of digits, a common vendor quirk). */
export function expiresInSeconds(raw: unknown, maxDigits = 12): number | undefined {
  let n: number | undefined;
  if (typeof raw === 'number') n = raw;
  else if (typeof raw === 'string' && raw.trim().length <= maxDigits && /^\d+$/.test(raw.trim())) n = Number(raw.trim());
  return n !== undefined && Number.isFinite(n) && n > 0 ? n : undefined;
}

/** The `exp` claim (seconds) of a JWT-shaped token, if it has one. Not verified: only used to bound the lifetime. */
export function jwtExpiry(token: string): number | undefined {
  const exp = unverifiedClaims(token)?.['exp'];
  return typeof exp === 'number' && Number.isFinite(exp) && exp > 0 ? exp : undefined;
}

function lifetime(rawExpiresIn: unknown, value: string, ctx: ParseContext): { expiresAtMs: number; source: Token['lifetimeSource'] } {
  const expiresIn = expiresInSeconds(rawExpiresIn);
  const jwtExp = jwtExpiry(value);
  let expiresAtMs: number;
  let source: Token['lifetimeSource'];
  if (expiresIn !== undefined) {
    expiresAtMs = ctx.requestedAtMs + expiresIn * 1000;
    source = 'expires_in';
    // A JWT that says it dies sooner than expires_in claims is believed.
    if (jwtExp !== undefined && jwtExp * 1000 < expiresAtMs) {
      expiresAtMs = jwtExp * 1000;
      source = 'jwt';
    }
  } else if (jwtExp !== undefined) {
    expiresAtMs = jwtExp * 1000;
    source = 'jwt';
  } else {
    expiresAtMs = ctx.requestedAtMs + ctx.defaultExpiresInMs;
    source = 'default';
  }
  if (expiresAtMs - ctx.nowMs < MIN_LIFETIME_MS) {
    throw new TokenEndpointError('unavailable', 'token endpoint issued a token that is already expired', {
      route: ctx.route,
      httpStatus: 200,
    });
  }
  return { expiresAtMs: Math.min(expiresAtMs, ctx.requestedAtMs + ctx.maxLifetimeMs), source };
}

const REJECTING = new Set([
  'invalid_client', 'unauthorized_client', 'invalid_grant', 'invalid_scope', 'invalid_request',
  'unsupported_grant_type', 'invalid_target', 'access_denied',
]);

function errorFromResponse(res: TokenHttpResponse, json: unknown, ctx: ParseContext): TokenEndpointError {
  const retryAfterMs = res.status === 429 || res.status === 503 ? parseRetryAfterMs(res.retryAfter, ctx.nowMs) : undefined;
  const oauth = typeof json === 'object' && json !== null ? (json as Record<string, unknown>) : undefined;
  const code = errorCode(oauth?.['error']);
  // The IdP's free text is for operators (logs), never for the app's problem body: it may quote what it received.
  const description = typeof oauth?.['error_description'] === 'string' ? sanitize(oauth['error_description'], ctx.redact) : undefined;
  const opts = { route: ctx.route, retryAfterMs, httpStatus: res.status, ...(code ? { oauthError: code } : {}), description };
  if (code && res.status >= 400 && res.status < 500 && res.status !== 429 && REJECTING.has(code)) {
    return new TokenEndpointError('rejected', `token endpoint refused the request: ${code}`, opts);
  }
  return new TokenEndpointError('unavailable', `token endpoint answered ${res.status}${code ? ` ${code}` : ` with ${describeBody(res)}`}`, opts);
}

/** Retry-After as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), bounded. */
export function parseRetryAfterMs(header: string | undefined, nowMs: number): number | undefined {
  if (!header) return undefined;
  const text = header.trim();
  let ms: number;
  if (/^\d+$/.test(text)) ms = Number(text) * 1000;
  else {
    const at = Date.parse(text);
    if (Number.isNaN(at)) return undefined;
    ms = at - nowMs;
  }
  return Math.min(Math.max(ms, 0), MAX_RETRY_AFTER_MS);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function describeBody(res: TokenHttpResponse): string {
  const type = res.contentType?.split(';')[0]?.trim();
  return res.body.length === 0 ? 'an empty body' : `a ${type || 'untyped'} body`;
}

/** Vendor text going into our errors: printable, short, and never containing a credential we sent. */
function sanitize(text: string, forms: readonly string[]): string {
  // Redact first: cutting or rewriting the text before would leave a secret's prefix, or a secret with non-ASCII
  // characters, unmatched and echoed.
  return redact(text, forms).replace(/[^\x20-\x7e]/g, '?').slice(0, 200);
}

/** An `error` value as RFC 6749 §5.2 allows it (%x20-21 / %x23-5B / %x5D-7E), else none: it goes into our text. */
function errorCode(raw: unknown): string | undefined {
  return typeof raw === 'string' && /^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$/.test(raw) ? raw : undefined;
}
