/**
 * Hostile token endpoints, against the real token client over real sockets: every answer that is not a usable token
 * ends as a typed TokenEndpointError, quickly and in bounded memory, never a crash, a hang or a token that cannot be
 * sent in a header.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenEndpointError } from '../../src/core/errors.js';
import { loadConfigText } from '../../src/config/load.js';
import type { OAuth2Auth } from '../../src/config/types.js';
import { OAuthClient } from '../../src/oauth/client.js';

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

let server: http.Server;
let handler: Handler = (_req, res) => res.end();
let base = '';
const client = new OAuthClient();

beforeAll(async () => {
  server = http.createServer((req, res) => {
    req.resume();
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await client.close();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

async function auth(timeout = '2s'): Promise<OAuth2Auth> {
  const loaded = await loadConfigText(`version: 1
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: https://api.vendor.example/v2
    auth: { type: oauth2, tokenUrl: "${base}/token", clientId: c, clientSecret: s3cret-value, timeout: ${timeout} }
`);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const a = loaded.config.routes[0]?.auth;
  if (a?.type !== 'oauth2') throw new Error('expected oauth2');
  return a;
}

/** The error a fetch against `h` ends in, and how long it took. */
async function failure(h: Handler, timeout?: string): Promise<{ err: TokenEndpointError; ms: number }> {
  handler = h;
  const startedMs = performance.now();
  try {
    await client.fetchToken('pix', await auth(timeout));
  } catch (err) {
    if (err instanceof TokenEndpointError) return { err, ms: performance.now() - startedMs };
    throw err;
  }
  throw new Error('expected the fetch to fail');
}

const json = (res: http.ServerResponse, body: string, status = 200) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(body);
};

describe('a token endpoint that', () => {
  it('answers more than 256 KiB: refused, the rest is not read', async () => {
    const { err } = await failure((_req, res) => json(res, JSON.stringify({ access_token: 'x'.repeat(300 * 1024), expires_in: 60 })));
    expect(err).toMatchObject({ code: 'TOKEN_UNAVAILABLE' });
    expect(err.message).toMatch(/larger than 262144 bytes/);
  });

  it('never stops sending: refused at the cap, long before the timeout', async () => {
    const { err, ms } = await failure((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(16 * 1024, 0x20);
      const pump = () => {
        while (!res.destroyed && res.write(chunk));
        if (!res.destroyed) res.once('drain', pump);
      };
      pump();
    }, '10s');
    expect(err.message).toMatch(/larger than/);
    expect(ms).toBeLessThan(5_000);
  });

  it('sends its headers and then nothing: the timeout ends it', async () => {
    const { err, ms } = await failure((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"access_token":');
    }, '300ms');
    expect(err.message).toMatch(/did not answer within 300 ms/);
    expect(ms).toBeLessThan(2_000);
  });

  it('answers 200 with an empty body, or closes before any answer', async () => {
    expect((await failure((_req, res) => res.end())).err.message).toMatch(/an empty body, not a JSON object/);
    expect((await failure((req) => req.socket.destroy())).err.message).toMatch(/unreachable|failed/);
  });

  it('nests JSON 100 000 levels deep: not a token, no crash', async () => {
    const { err } = await failure((_req, res) => json(res, `${'['.repeat(100_000)}${']'.repeat(100_000)}`));
    expect(err.message).toMatch(/not a JSON object/);
  });

  it('puts CR/LF, a space or a non-ASCII character into the token: refused (it could not go into a header)', async () => {
    for (const token of ['abc\r\nX-Evil: 1', 'abc def', 'abcé', '']) {
      const { err } = await failure((_req, res) => json(res, JSON.stringify({ access_token: token, expires_in: 60 })));
      expect(err.message, JSON.stringify(token)).toMatch(/no valid access_token/);
    }
  });

  it('answers with the wrong types everywhere: a number token, an array, a string expires_in that is not digits', async () => {
    expect((await failure((_req, res) => json(res, JSON.stringify({ access_token: 12345, expires_in: 60 })))).err.message).toMatch(/no valid access_token/);
    expect((await failure((_req, res) => json(res, '[{"access_token":"a"}]'))).err.message).toMatch(/not a JSON object/);
    // A lifetime that is not a number falls back to the default (bounded), it does not fail or live forever.
    handler = (_req, res) => json(res, JSON.stringify({ access_token: 'tok-abc', expires_in: '1e9' }));
    const token = await client.fetchToken('pix', await auth());
    expect(token.lifetimeSource).toBe('default');
    expect(token.expiresAtMs - token.issuedAtMs).toBe(300_000);
  });

  it('redirects to another host: not followed (our credentials never go where a Location points)', async () => {
    let followed = 0;
    const other = http.createServer((_req, res) => {
      followed++;
      json(res, JSON.stringify({ access_token: 'stolen', expires_in: 60 }));
    });
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      const location = `http://127.0.0.1:${(other.address() as AddressInfo).port}/token`;
      const { err } = await failure((_req, res) => {
        res.writeHead(307, { location });
        res.end();
      });
      expect(err.message).toMatch(/answered 307/);
      expect(followed).toBe(0);
    } finally {
      other.closeAllConnections();
      await new Promise<void>((resolve) => other.close(() => resolve()));
    }
  });
});
