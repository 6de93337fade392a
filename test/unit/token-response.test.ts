import { describe, expect, it } from 'vitest';
import {
  expiresInSeconds,
  jwtExpiry,
  parseRetryAfterMs,
  parseTokenResponse,
  type ParseContext,
  type TokenHttpResponse,
} from '../../src/oauth/response.js';
import { fingerprintOf } from '../../src/core/token.js';
import { TokenEndpointError } from '../../src/core/errors.js';

const NOW = 1_800_000_000_000; // a whole second, so HTTP-dates round-trip exactly
const SECRET = 'Sup3r-Secret-Value-0xBEEF';
const DEFAULT_MS = 300_000;
const MAX_MS = 86_400_000;

const ctx: ParseContext = {
  route: 'pix',
  requestedAtMs: NOW - 200,
  nowMs: NOW,
  defaultExpiresInMs: DEFAULT_MS,
  maxLifetimeMs: MAX_MS,
  redact: [SECRET],
};

function ok(body: unknown, c: Partial<ParseContext> = {}) {
  return parseTokenResponse({ status: 200, contentType: 'application/json', retryAfter: undefined, body: JSON.stringify(body) }, { ...ctx, ...c });
}

function fail(res: Partial<TokenHttpResponse> & { status: number }, c: Partial<ParseContext> = {}): TokenEndpointError {
  try {
    parseTokenResponse({ contentType: 'application/json', retryAfter: undefined, body: '', ...res }, { ...ctx, ...c });
  } catch (err) {
    if (err instanceof TokenEndpointError) return err;
    throw err;
  }
  throw new Error('expected parseTokenResponse to throw');
}

function jwt(payload: Record<string, unknown>): string {
  const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(payload)}.sig`;
}

describe('§5.1 success: the token', () => {
  it('builds a Bearer token whose expiry counts from the request time', () => {
    const token = ok({ access_token: 'tok-1', token_type: 'Bearer', expires_in: 3600, scope: 'cob.read cob.write' });
    expect(token.value.reveal()).toBe('tok-1');
    expect(token.tokenType).toBe('Bearer');
    expect(token.issuedAtMs).toBe(ctx.requestedAtMs);
    expect(token.expiresAtMs).toBe(ctx.requestedAtMs + 3_600_000);
    expect(token.lifetimeSource).toBe('expires_in');
    expect(token.scope).toBe('cob.read cob.write');
    expect(token.fingerprint).toBe(fingerprintOf('tok-1'));
    expect(token.fingerprint).toMatch(/^[0-9a-f]{12}$/);
    // The value never prints.
    expect(JSON.stringify(token)).not.toContain('tok-1');
    expect(String(token.value)).toBe('[redacted]');
  });

  it.each([
    ['absent', undefined],
    ['"abc"', 'abc'],
    ['0', 0],
    ['-5', -5],
    ['"NaN"', 'NaN'],
    ['null', null],
    ['true', true],
    ['false', false],
    ['an object', { seconds: 60 }],
    ['an array', [60]],
    ['"-5"', '-5'],
    ['"1e3"', '1e3'],
    ['"  "', '  '],
  ])('expires_in %s falls back to the configured default', (_label, expiresIn) => {
    const body: Record<string, unknown> = { access_token: 'tok', token_type: 'Bearer' };
    if (expiresIn !== undefined) body['expires_in'] = expiresIn;
    const token = ok(body);
    expect(token.lifetimeSource).toBe('default');
    expect(token.expiresAtMs).toBe(ctx.requestedAtMs + DEFAULT_MS);
  });

  it('expires_in as a digit string ("3600") is accepted', () => {
    const token = ok({ access_token: 'tok', token_type: 'Bearer', expires_in: '3600' });
    expect(token.lifetimeSource).toBe('expires_in');
    expect(token.expiresAtMs).toBe(ctx.requestedAtMs + 3_600_000);
  });

  it('a huge expires_in (1e12, "999999999999", 1e400 → Infinity) never yields an unbounded lifetime', () => {
    for (const expiresIn of [1e12, '999999999999', Number.MAX_SAFE_INTEGER]) {
      const token = ok({ access_token: 'tok', token_type: 'Bearer', expires_in: expiresIn });
      expect(token.expiresAtMs).toBe(ctx.requestedAtMs + MAX_MS);
    }
    // JSON.parse turns 1e400 into Infinity: not finite, so the default applies, never Infinity.
    const inf = parseTokenResponse(
      { status: 200, contentType: 'application/json', retryAfter: undefined, body: '{"access_token":"tok","expires_in":1e400}' },
      ctx,
    );
    expect(Number.isFinite(inf.expiresAtMs)).toBe(true);
    expect(inf.expiresAtMs).toBe(ctx.requestedAtMs + DEFAULT_MS);
  });

  it('a smaller maxLifetime clamps even an ordinary expires_in', () => {
    const token = ok({ access_token: 'tok', expires_in: 3600 }, { maxLifetimeMs: 60_000 });
    expect(token.expiresAtMs).toBe(ctx.requestedAtMs + 60_000);
  });

  it('falls back to the JWT exp when expires_in is missing', () => {
    const exp = NOW / 1000 + 900;
    const token = ok({ access_token: jwt({ sub: 'c', exp }), token_type: 'Bearer' });
    expect(token.lifetimeSource).toBe('jwt');
    expect(token.expiresAtMs).toBe(exp * 1000);
  });

  it('uses min(expires_in, JWT exp)', () => {
    const soon = NOW / 1000 + 600;
    const early = ok({ access_token: jwt({ exp: soon }), token_type: 'Bearer', expires_in: 3600 });
    expect(early.lifetimeSource).toBe('jwt');
    expect(early.expiresAtMs).toBe(soon * 1000);

    const late = ok({ access_token: jwt({ exp: NOW / 1000 + 7200 }), token_type: 'Bearer', expires_in: 60 });
    expect(late.lifetimeSource).toBe('expires_in');
    expect(late.expiresAtMs).toBe(ctx.requestedAtMs + 60_000);
  });

  it('clamps a far-future JWT exp to maxLifetime, and ignores a JWT without a usable exp', () => {
    const far = ok({ access_token: jwt({ exp: NOW / 1000 + 10 * 365 * 86_400 }) });
    expect(far.expiresAtMs).toBe(ctx.requestedAtMs + MAX_MS);
    for (const payload of [{ sub: 'x' }, { exp: 'soon' }, { exp: -1 }]) {
      expect(ok({ access_token: jwt(payload) }).lifetimeSource).toBe('default');
    }
    expect(jwtExpiry('a.%%%.c')).toBeUndefined();
    expect(jwtExpiry('not-a-jwt')).toBeUndefined();
  });

  it('refuses a token that is already expired (JWT exp in the past)', () => {
    const err = fail({ status: 200, body: JSON.stringify({ access_token: jwt({ exp: NOW / 1000 - 10 }), expires_in: 3600 }) });
    expect(err.kind).toBe('unavailable');
    expect(err.code).toBe('TOKEN_UNAVAILABLE');
  });

  it('token_type: missing and any casing of bearer are accepted, others are refused', () => {
    expect(ok({ access_token: 'tok' }).tokenType).toBe('Bearer');
    expect(ok({ access_token: 'tok', token_type: 'bearer' }).tokenType).toBe('Bearer');
    expect(ok({ access_token: 'tok', token_type: 'BEARER' }).tokenType).toBe('Bearer');
    for (const tokenType of ['mac', 'DPoP', 42, null]) {
      const err = fail({ status: 200, body: JSON.stringify({ access_token: 'tok', token_type: tokenType }) });
      expect(err.code).toBe('TOKEN_UNAVAILABLE');
      expect(err.message).toMatch(/token_type/);
    }
  });

  it.each([
    ['with a space', 'abc def'],
    ['with CRLF', 'abc\r\nX-Injected: 1'],
    ['with a LF', 'abc\n'],
    ['empty', ''],
    ['non-ASCII', 'tök'],
    ['a number', 12345],
    ['missing', undefined],
  ])('access_token %s is refused', (_label, value) => {
    const body: Record<string, unknown> = { token_type: 'Bearer', expires_in: 3600 };
    if (value !== undefined) body['access_token'] = value;
    const err = fail({ status: 200, body: JSON.stringify(body) });
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/access_token/);
  });

  it('a 200 that is not a JSON object is unavailable, and says what it was', () => {
    const err = fail({ status: 200, contentType: 'text/html; charset=utf-8', body: '<html>login</html>' });
    expect(err.kind).toBe('unavailable');
    expect(err.message).toContain('text/html');
    expect(err.message).not.toContain('<html>');
    expect(fail({ status: 200, body: '["tok"]' }).kind).toBe('unavailable');
    expect(fail({ status: 200, body: '' }).message).toContain('empty body');
  });
});

describe('§5.2 errors', () => {
  it('invalid_client (401 and 400) is rejected: our credentials were refused', () => {
    for (const status of [400, 401]) {
      const err = fail({ status, body: JSON.stringify({ error: 'invalid_client' }) });
      expect(err).toBeInstanceOf(TokenEndpointError);
      expect(err.kind).toBe('rejected');
      expect(err.code).toBe('TOKEN_REJECTED');
      expect(err.status).toBe(502);
      expect(err.oauthError).toBe('invalid_client');
      expect(err.httpStatus).toBe(status);
      expect(err.retryAfterMs).toBeUndefined();
    }
    for (const error of ['unauthorized_client', 'invalid_grant', 'invalid_scope', 'unsupported_grant_type']) {
      expect(fail({ status: 400, body: JSON.stringify({ error }) }).kind).toBe('rejected');
    }
  });

  it('an unknown OAuth error code is transient, not a credential rejection', () => {
    const err = fail({ status: 400, body: JSON.stringify({ error: 'temporarily_unavailable' }) });
    expect(err.kind).toBe('unavailable');
    expect(err.oauthError).toBe('temporarily_unavailable');
  });

  it('500 with an HTML page is unavailable, without echoing the page', () => {
    const err = fail({ status: 500, contentType: 'text/html', body: '<html><body>Internal Server Error: stack…</body></html>' });
    expect(err.kind).toBe('unavailable');
    expect(err.code).toBe('TOKEN_UNAVAILABLE');
    expect(err.status).toBe(503);
    expect(err.httpStatus).toBe(500);
    expect(err.message).toBe('token endpoint answered 500 with a text/html body');
    expect(err.retryAfterMs).toBeUndefined();
  });

  it('429 and 503 honour Retry-After in seconds', () => {
    for (const status of [429, 503]) {
      const err = fail({ status, retryAfter: '7', body: JSON.stringify({ error: 'slow_down' }) });
      expect(err.kind).toBe('unavailable');
      expect(err.retryAfterMs).toBe(7_000);
      expect(err.retryAfterS).toBe(7);
    }
    // 429 is never a rejection, even with a credential-sounding code.
    expect(fail({ status: 429, retryAfter: '3', body: JSON.stringify({ error: 'invalid_client' }) }).kind).toBe('unavailable');
  });

  it('429 and 503 honour Retry-After as an HTTP-date', () => {
    const date = new Date(NOW + 120_000).toUTCString();
    const err = fail({ status: 503, contentType: 'text/plain', retryAfter: date, body: 'maintenance' });
    expect(err.retryAfterMs).toBe(120_000);
    expect(err.retryAfterS).toBe(120);
  });

  it('Retry-After is bounded and tolerant', () => {
    expect(parseRetryAfterMs('0', NOW)).toBe(0);
    expect(parseRetryAfterMs(new Date(NOW - 60_000).toUTCString(), NOW)).toBe(0);
    expect(parseRetryAfterMs('99999999', NOW)).toBe(3_600_000);
    expect(parseRetryAfterMs('soon', NOW)).toBeUndefined();
    expect(parseRetryAfterMs(undefined, NOW)).toBeUndefined();
    // Only 429/503 carry it.
    expect(fail({ status: 500, retryAfter: '7', body: '' }).retryAfterMs).toBeUndefined();
  });

  it("the endpoint's error_description never reaches the message (an app-visible detail); it is kept, redacted, for logs", () => {
    const err = fail({
      status: 401,
      body: JSON.stringify({ error: 'invalid_client', error_description: `client secret ${SECRET} does not match` }),
    });
    expect(err.message).toBe('token endpoint refused the request: invalid_client');
    expect(err.description).toContain('[redacted]');
    expect(err.description).not.toContain(SECRET);
  });

  it('the secret is redacted even when it sits at the truncation point or holds non-ASCII characters', () => {
    const cut = fail({ status: 401, body: JSON.stringify({ error: 'invalid_client', error_description: `${'x'.repeat(190)}${SECRET}` }) });
    expect(cut.description).not.toContain(SECRET.slice(0, 6));

    const accented = 'pässwörd-Ünïcode';
    const err = fail(
      { status: 401, body: JSON.stringify({ error: 'invalid_client', error_description: `bad secret ${accented}` }) },
      { redact: [accented] },
    );
    expect(err.description).toContain('[redacted]');
    expect(err.description).not.toContain('p?ssw?rd');
  });

  it('an error value outside RFC 6749 §5.2 (quotes, control characters, very long) is not repeated', () => {
    for (const error of ['invalid"client', 'a\nb', 'x'.repeat(65), 42]) {
      const err = fail({ status: 400, body: JSON.stringify({ error }) });
      expect(err.oauthError).toBeUndefined();
      expect(err.message).toBe('token endpoint answered 400 with a application/json body');
    }
  });

  it('vendor text in errors is printable and short', () => {
    const err = fail({ status: 400, body: JSON.stringify({ error: 'invalid_scope', error_description: `line1\r\nline2${'y'.repeat(500)}` }) });
    expect(err.message).not.toMatch(/[\r\n]/);
    expect(err.message.length).toBeLessThan(300);
  });
});

describe('expiresInSeconds', () => {
  it('accepts positive finite numbers and digit strings only', () => {
    expect(expiresInSeconds(60)).toBe(60);
    expect(expiresInSeconds(' 60 ')).toBe(60);
    expect(expiresInSeconds(1.5)).toBe(1.5);
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, '', 'x', '1e3', '-1', true, null, undefined, {}]) {
      expect(expiresInSeconds(bad)).toBeUndefined();
    }
  });
});
