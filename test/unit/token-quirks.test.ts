/**
 * Token response quirks (`auth.tokenResponse`) and DPoP token types, in `parseTokenResponse` (and `refreshTokenIn`); then through the real
 * OAuthClient against a token endpoint on a local socket, configured from routes.yaml as a vendor with a nested,
 * dated answer and a tenant header would need.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { TokenEndpointError } from '../../src/core/errors.js';
import { loadConfigText } from '../../src/config/load.js';
import type { OAuth2Auth, TokenResponseShape } from '../../src/config/types.js';
import { OAuthClient } from '../../src/oauth/client.js';
import { parseTokenResponse, refreshTokenIn, type ParseContext } from '../../src/oauth/response.js';

const NOW = 1_800_000_000_000; // 2027-01-15T08:00:00.000Z
const REQUESTED = NOW - 200;
const DEFAULT_MS = 300_000;
const MAX_MS = 86_400_000;

const ctx: ParseContext = {
  route: 'pix',
  requestedAtMs: REQUESTED,
  nowMs: NOW,
  defaultExpiresInMs: DEFAULT_MS,
  maxLifetimeMs: MAX_MS,
  redact: ['client-secret-value'],
};

const shape = (accessToken: string, expiry: string, expiryFormat: TokenResponseShape['expiryFormat']): TokenResponseShape => ({
  accessToken: accessToken.split('.'),
  expiry: expiry.split('.'),
  expiryFormat,
});

function answer(body: unknown, c: Partial<ParseContext> = {}) {
  const text = JSON.stringify(body);
  return { token: parseTokenResponse({ status: 200, contentType: 'application/json', retryAfter: undefined, body: text }, { ...ctx, ...c }), refreshToken: refreshTokenIn(text) };
}

function refusal(body: unknown, c: Partial<ParseContext> = {}): TokenEndpointError {
  try {
    answer(body, c);
  } catch (err) {
    if (err instanceof TokenEndpointError) return err;
    throw err;
  }
  throw new Error('expected the answer to be refused');
}

describe('tokenResponse: where the token and its expiry are', () => {
  it('nested data.accessToken with data.expiresIn in seconds', () => {
    const { token } = answer({ data: { accessToken: 'nested-tok', expiresIn: 900 }, access_token: 'not-this-one' }, { shape: shape('data.accessToken', 'data.expiresIn', 'seconds') });
    expect(token.value.reveal()).toBe('nested-tok');
    expect(token.expiresAtMs).toBe(REQUESTED + 900_000);
    expect(token.lifetimeSource).toBe('expires_in');
  });

  it('a lifetime in milliseconds (number or digit string)', () => {
    const s = shape('access_token', 'expires_in_ms', 'milliseconds');
    expect(answer({ access_token: 't', expires_in_ms: 3_600_000 }, { shape: s }).token.expiresAtMs).toBe(REQUESTED + 3_600_000);
    expect(answer({ access_token: 't', expires_in_ms: '1500' }, { shape: s }).token.expiresAtMs).toBe(REQUESTED + 1_500);
    // Not read as seconds: 3 600 000 s would be clamped to maxLifetime.
    expect(answer({ access_token: 't', expires_in_ms: 60_000 }, { shape: s }).token.expiresAtMs).toBe(REQUESTED + 60_000);
  });

  it('unix-seconds: the absolute expiry, number or digit string', () => {
    const s = shape('access_token', 'expires_at', 'unix-seconds');
    const at = NOW / 1000 + 600;
    for (const raw of [at, String(at)]) {
      const { token } = answer({ access_token: 't', expires_at: raw }, { shape: s });
      expect(token.expiresAtMs).toBeCloseTo((NOW / 1000 + 600) * 1000, 6);
      expect(token.lifetimeSource).toBe('expires_in');
    }
  });

  it('unix-milliseconds: the absolute expiry as a number', () => {
    const { token } = answer({ access_token: 't', exp_ms: NOW + 601_500 }, { shape: shape('access_token', 'exp_ms', 'unix-milliseconds') });
    expect(token.expiresAtMs).toBeCloseTo(NOW + 601_500, 6);
  });

  it('date: an RFC 3339 time, in UTC or with an offset', () => {
    const s = shape('data.token', 'data.expiresAt', 'date');
    for (const text of ['2027-01-15T08:10:00Z', '2027-01-15T08:10:00.000Z', '2027-01-15T10:10:00+02:00', '2027-01-15T03:10:00-05:00']) {
      const { token } = answer({ data: { token: 'dated', expiresAt: text } }, { shape: s });
      expect(token.expiresAtMs, text).toBeCloseTo(NOW + 600_000, 6);
    }
  });

  it('whatever the format, maxLifetime still bounds it', () => {
    const far = new Date(NOW + 30 * 86_400_000).toISOString();
    expect(answer({ access_token: 't', exp: far }, { shape: shape('access_token', 'exp', 'date') }).token.expiresAtMs).toBe(REQUESTED + MAX_MS);
    expect(answer({ access_token: 't', exp: NOW + 30 * 86_400_000 }, { shape: shape('access_token', 'exp', 'unix-milliseconds') }).token.expiresAtMs).toBe(REQUESTED + MAX_MS);
  });

  it('an absolute expiry less than a second away is refused as already expired', () => {
    for (const [fmt, raw] of [
      ['date', new Date(NOW + 500).toISOString()],
      ['unix-milliseconds', NOW + 500],
      ['unix-seconds', (NOW + 500) / 1000],
    ] as const) {
      expect(refusal({ access_token: 't', exp: raw }, { shape: shape('access_token', 'exp', fmt) }).message, fmt).toMatch(/already expired/);
    }
  });

  it('a configured access-token path that is missing: a clear error naming the path', () => {
    const s = shape('data.accessToken', 'data.expiresIn', 'seconds');
    for (const body of [{ data: {} }, { access_token: 'standard-place' }, { data: { accessToken: 42 } }, { data: 'x' }, { data: [{ accessToken: 'a' }] }]) {
      const err = refusal(body, { shape: s });
      expect(err.code).toBe('TOKEN_UNAVAILABLE');
      expect(err.message).toBe('token response has no valid data.accessToken (RFC 6749 §5.1)');
    }
  });

  it('only own properties are followed (no __proto__ / constructor walk)', () => {
    expect(refusal({ access_token: 't' }, { shape: shape('constructor.name', 'expires_in', 'seconds') }).message).toMatch(/no valid constructor\.name/);
  });

  it('a configured expiry path that is missing falls back to the default lifetime, marked as such (documented: "degrades to a bounded one")', () => {
    const { token } = answer({ data: { accessToken: 'a' } }, { shape: shape('data.accessToken', 'data.expiresAt', 'date') });
    expect(token.lifetimeSource).toBe('default');
    expect(token.expiresAtMs).toBe(REQUESTED + DEFAULT_MS);
  });

  // Was a defect, fixed (src/oauth/response.ts expiresInSecondsOf → lifetime): an absolute expiry in the past turns into a negative
  // lifetime, which expiresInSeconds() treats as "no usable value", so the token gets defaultExpiresIn (5 min) from
  // the request. A time 0.5 s ahead is refused as "already expired" (test above), one 1 s behind is served for 5 min.
  it.each([
    ['date', new Date(NOW - 1_000).toISOString()],
    ['unix-milliseconds', NOW - 1_000],
    ['unix-seconds', NOW / 1000 - 1],
  ] as const)('%s: an expiry already past is refused, not given the default lifetime', (fmt, raw) => {
    expect(refusal({ access_token: 't', exp: raw }, { shape: shape('access_token', 'exp', fmt) }).message).toMatch(/already expired/);
  });

  // Was a defect, fixed (src/oauth/response.ts expiresInSeconds): a digit string is accepted up to 12 digits (a lifetime), but a
  // unix-milliseconds time has 13, so a vendor that sends it quoted gets the default lifetime (unix-seconds works).
  it('unix-milliseconds as a digit string is read like the number', () => {
    const { token } = answer({ access_token: 't', exp_ms: String(NOW + 600_000) }, { shape: shape('access_token', 'exp_ms', 'unix-milliseconds') });
    expect(token.lifetimeSource).toBe('expires_in');
    expect(token.expiresAtMs).toBeCloseTo(NOW + 600_000, 6);
  });

  // Was a defect, fixed (src/oauth/response.ts expiresInSecondsOf, case 'date'): Date.parse takes far more than RFC 3339; "3600"
  // (a lifetime, from a vendor or a misconfigured route) parses as the year 3600 and becomes a maxLifetime (24 h) token.
  it('date: a value that is not RFC 3339 ("3600") is not a usable expiry', () => {
    const { token } = answer({ access_token: 't', exp: '3600' }, { shape: shape('access_token', 'exp', 'date') });
    expect(token.lifetimeSource).toBe('default');
    expect(token.expiresAtMs).toBe(REQUESTED + DEFAULT_MS);
  });
});

describe('token_type and refresh_token', () => {
  it('token_type DPoP without auth.dpop is refused (it cannot be sent as Bearer)', () => {
    const err = refusal({ access_token: 't', token_type: 'DPoP', expires_in: 60 });
    expect(err.message).toBe('unsupported token_type "DPoP"; only Bearer (DPoP needs auth.dpop) is supported');
  });

  it.each(['DPoP', 'dpop', 'DPOP'])('token_type %s with auth.dpop: tokenType DPoP', (type) => {
    expect(answer({ access_token: 't', token_type: type, expires_in: 60 }, { dpop: true }).token.tokenType).toBe('DPoP');
  });

  it.each(['Bearer', 'bearer', undefined])('token_type %s with auth.dpop: accepted as an unbound Bearer token', (type) => {
    expect(answer({ access_token: 't', token_type: type, expires_in: 60 }, { dpop: true }).token.tokenType).toBe('Bearer');
  });

  it('other token types are refused either way', () => {
    expect(refusal({ access_token: 't', token_type: 'mac', expires_in: 60 }, { dpop: true }).message).toBe('unsupported token_type "mac"; DPoP or Bearer is supported');
  });

  it('the refresh_token of the answer is returned (RFC 6749 §6: it may rotate), and only a valid one', () => {
    expect(answer({ access_token: 't', expires_in: 60, refresh_token: 'rt-2.next' }).refreshToken).toBe('rt-2.next');
    expect(answer({ access_token: 't', expires_in: 60 }).refreshToken).toBeUndefined();
    expect(answer({ access_token: 't', expires_in: 60, refresh_token: 42 }).refreshToken).toBeUndefined();
    expect(answer({ access_token: 't', expires_in: 60, refresh_token: 'has space' }).refreshToken).toBeUndefined();
    // With a nested shape too: refresh_token is read at the top level, as RFC 6749 §5.1 places it.
    expect(answer({ data: { t: 'x', e: 60 }, refresh_token: 'rt-3' }, { shape: shape('data.t', 'data.e', 'seconds') }).refreshToken).toBe('rt-3');
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Through the real client and a real socket

interface Seen {
  headers: http.IncomingHttpHeaders;
  form: URLSearchParams;
}

describe('OAuthClient with a vendor-shaped answer from a local token endpoint', () => {
  let server: http.Server;
  let base = '';
  const seen: Seen[] = [];
  let reply: (form: URLSearchParams) => { status: number; body: unknown } = () => ({ status: 500, body: {} });
  const client = new OAuthClient();

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        seen.push({ headers: req.headers, form });
        const { status, body } = reply(form);
        res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
        res.end(JSON.stringify(body));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await client.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  async function auth(extra: Record<string, unknown>): Promise<OAuth2Auth> {
    const yaml = stringify({
      version: 1,
      routes: [
        {
          name: 'acme',
          match: { pathPrefix: '/acme' },
          upstream: 'https://api.vendor.example/v2',
          auth: { type: 'oauth2', tokenUrl: `${base}/oauth/token`, clientId: 'acme-client', clientSecret: 'acme-secret-value', ...extra },
        },
      ],
    });
    const loaded = await loadConfigText(yaml, { env: {} });
    if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
    const a = loaded.config.routes[0]?.auth;
    if (a?.type !== 'oauth2') throw new Error('expected oauth2');
    return a;
  }

  it('tokenResponse { accessToken: data.token, expiry: data.expiresAt, expiryFormat: date } and headers { x-tenant: acme }', async () => {
    const expiresAt = new Date(Math.floor(Date.now() / 1000) * 1000 + 900_000).toISOString();
    reply = () => ({ status: 200, body: { status: 'ok', data: { token: 'vendor-tok-123', expiresAt, type: 'bearer' } } });
    const a = await auth({ tokenResponse: { accessToken: 'data.token', expiry: 'data.expiresAt', expiryFormat: 'date' }, headers: { 'x-tenant': 'acme' } });
    const before = seen.length;
    const token = await client.fetchToken('acme', a);
    expect(seen).toHaveLength(before + 1);
    const req = seen.at(-1) as Seen;
    expect(req.headers['x-tenant']).toBe('acme');
    expect(req.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(req.headers['authorization']).toBe(`Basic ${Buffer.from('acme-client:acme-secret-value').toString('base64')}`);
    expect(req.form.get('grant_type')).toBe('client_credentials');
    expect(token.value.reveal()).toBe('vendor-tok-123');
    expect(token.tokenType).toBe('Bearer');
    expect(token.lifetimeSource).toBe('expires_in');
    expect(token.expiresAtMs).toBeCloseTo(Date.parse(expiresAt), 3);
  });

  it('the configured path is missing from the answer: TOKEN_UNAVAILABLE naming data.token', async () => {
    reply = () => ({ status: 200, body: { access_token: 'standard-but-not-configured', expires_in: 60 } });
    const a = await auth({ tokenResponse: { accessToken: 'data.token', expiry: 'data.expiresAt', expiryFormat: 'date' } });
    await expect(client.fetchToken('acme', a)).rejects.toMatchObject({ code: 'TOKEN_UNAVAILABLE', message: 'token response has no valid data.token (RFC 6749 §5.1)' });
  });

  it('dpop: the token request carries a proof, and token_type DPoP comes back as a DPoP token', async () => {
    reply = () => ({ status: 200, body: { access_token: 'bound-tok', token_type: 'DPoP', expires_in: 300 } });
    const token = await client.fetchToken('acme', await auth({ dpop: {} }));
    expect(seen.at(-1)?.headers['dpop']).toMatch(/^eyJ[\w-]+\.[\w-]+\.[\w-]+$/);
    expect(token.tokenType).toBe('DPoP');
  });

  it('refresh_token grant: the rotated refresh token of the answer is handed to onRefreshToken; none when absent', async () => {
    reply = (form) => ({ status: 200, body: { access_token: `at-for-${form.get('refresh_token') ?? ''}`, expires_in: 300, ...(form.get('refresh_token') === 'rt-1' ? { refresh_token: 'rt-2' } : {}) } });
    const a = await auth({ grant: 'refresh_token', refreshToken: 'rt-seed' });
    const rotated: string[] = [];
    const first = await client.fetchToken('acme', a, { refreshToken: 'rt-1', onRefreshToken: (rt) => rotated.push(rt) });
    expect(seen.at(-1)?.form.get('refresh_token')).toBe('rt-1');
    expect(first.value.reveal()).toBe('at-for-rt-1');
    expect(rotated).toEqual(['rt-2']);
    await client.fetchToken('acme', a, { refreshToken: 'rt-2', onRefreshToken: (rt) => rotated.push(rt) });
    expect(rotated).toEqual(['rt-2']);
    // Without grant input, the configured seed is sent.
    await client.fetchToken('acme', a);
    expect(seen.at(-1)?.form.get('refresh_token')).toBe('rt-seed');
  });
});
