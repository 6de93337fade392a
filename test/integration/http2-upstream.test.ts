/**
 * HTTP/2 to the vendor (route `http2`): a local TLS vendor made with a test CA, h2-only or h2 + HTTP/1.1, behind an
 * in-process sidecar loaded through the real config loader.
 */
import { createSecureServer, type Http2SecureServer, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfigText } from '../../src/config/load.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { createLogger } from '../../src/log.js';
import { Sidecar } from '../../src/sidecar.js';
import { makeCerts, type Certs } from '../helpers/certs.js';

interface Seen {
  httpVersion: string;
  authorization: string | undefined;
  path: string;
  bodyBytes: number;
}

interface H2Vendor {
  url: string;
  /** Most requests in progress at once at the vendor since the last reset. */
  readonly maxConcurrent: number;
  resetConcurrency(): void;
  seen: Seen[];
  /** TLS sessions (connections) the vendor accepted. */
  sessions: number;
  /** 401 the next `n` requests. */
  refuseNext(n: number): void;
  close(): Promise<void>;
}

async function startH2Vendor(certs: Certs, allowHTTP1: boolean): Promise<H2Vendor> {
  const seen: Seen[] = [];
  let refuse = 0;
  let sessions = 0;
  let open = 0;
  let maxConcurrent = 0;
  const server: Http2SecureServer = createSecureServer({ key: certs.key, cert: certs.cert, allowHTTP1 });
  server.on('session', () => sessions++);
  server.on('request', (req: Http2ServerRequest, res: Http2ServerResponse) => {
    let bodyBytes = 0;
    open++;
    maxConcurrent = Math.max(maxConcurrent, open);
    req.on('data', (c: Buffer) => (bodyBytes += c.length));
    req.on('end', () => setTimeout(() => {
      open--;
      seen.push({ httpVersion: req.httpVersion, authorization: req.headers.authorization, path: req.url, bodyBytes });
      if (refuse > 0) {
        refuse--;
        res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'] });
      res.end(JSON.stringify({ httpVersion: req.httpVersion, path: req.url, bodyBytes }));
    }, 20));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `https://localhost:${port}`,
    seen,
    get sessions() {
      return sessions;
    },
    get maxConcurrent() {
      return maxConcurrent;
    },
    resetConcurrency: () => (maxConcurrent = 0),
    refuseNext: (n) => (refuse = n),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Sessions keep the server open; the sidecar's pools are closed first in afterAll.
      }),
  };
}

describe('HTTP/2 to the vendor', () => {
  let certs: Certs;
  let idp: FakeIdp;
  let h2only: H2Vendor;
  let both: H2Vendor;
  let h1only: HttpsServer;
  let sidecar: Sidecar;
  let proxy: string;

  beforeAll(async () => {
    certs = await makeCerts();
    idp = await startFakeIdp({ clients: { c: 's3cret-h2-test' } });
    h2only = await startH2Vendor(certs, false);
    both = await startH2Vendor(certs, true);
    h1only = createHttpsServer({ key: certs.key, cert: certs.cert }, (_req, res) => res.end('h1'));
    await new Promise<void>((resolve) => h1only.listen(0, '127.0.0.1', resolve));
    const h1url = `https://localhost:${(h1only.address() as AddressInfo).port}`;
    const auth = { type: 'oauth2', tokenUrl: idp.url, clientId: 'c', clientSecret: 's3cret-h2-test' };
    const tls = { ca: { fromFile: certs.caFile } };
    const routes = [
      { name: 'h2', match: { pathPrefix: '/h2' }, upstream: `${h2only.url}/v1`, upstreamTls: tls, auth, http2: true },
      { name: 'h1-to-h2only', match: { pathPrefix: '/h1' }, upstream: `${h2only.url}/v1`, upstreamTls: tls, auth },
      { name: 'auto', match: { pathPrefix: '/auto' }, upstream: `${both.url}/v1`, upstreamTls: tls, auth, http2: 'auto' },
      { name: 'h1', match: { pathPrefix: '/h1both' }, upstream: `${both.url}/v1`, upstreamTls: tls, auth },
      { name: 'h2-to-h1', match: { pathPrefix: '/h2-to-h1' }, upstream: h1url, upstreamTls: tls, auth, http2: true },
    ];
    const loaded = await loadConfigText(stringify({ version: 1, listen: '127.0.0.1:0', admin: '127.0.0.1:0', routes }));
    if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
    sidecar = await Sidecar.start({ config: loaded.config, log: createLogger({ level: 'silent' }) });
    proxy = sidecar.proxyUrl;
  });

  afterAll(async () => {
    await sidecar?.stop(200);
    await Promise.allSettled([idp?.close(), h2only?.close(), both?.close(), new Promise((r) => h1only?.close(r))]);
  });

  it('serves an h2-only vendor over h2, with the token, and multiplexes a cold burst on at most 4 connections', async () => {
    const before = h2only.sessions;
    h2only.resetConcurrency();
    const answers = await Promise.all(
      Array.from({ length: 50 }, (_, i) => fetch(`${proxy}/h2/items/${i}`).then(async (r) => ({ status: r.status, body: (await r.json()) as Seen }))),
    );
    expect(answers.every((a) => a.status === 200)).toBe(true);
    expect(new Set(answers.map((a) => a.body.httpVersion))).toEqual(new Set(['2.0']));
    expect(answers.map((a) => a.body.path).sort()).toEqual(Array.from({ length: 50 }, (_, i) => `/v1/items/${i}`).sort());
    const mine = h2only.seen.filter((s) => s.path.startsWith('/v1/items/'));
    expect(mine.every((s) => s.authorization === `Bearer ${idp.lastToken()}`)).toBe(true);
    // Streams, not 50 sockets: the pool caps the connections it opens while the first handshake runs.
    const opened = h2only.sessions - before;
    expect(opened).toBeGreaterThanOrEqual(1);
    expect(opened).toBeLessThanOrEqual(4);
    expect(h2only.maxConcurrent).toBeGreaterThan(opened);
    // Warm: another burst opens nothing.
    const warm = h2only.sessions;
    await Promise.all(Array.from({ length: 50 }, (_, i) => fetch(`${proxy}/h2/again/${i}`).then((r) => r.arrayBuffer())));
    expect(h2only.sessions).toBe(warm);
  });

  it('multiplexes POSTs too (undici serializes non-idempotent requests unless told)', async () => {
    h2only.resetConcurrency();
    const answers = await Promise.all(
      Array.from({ length: 40 }, (_, i) => fetch(`${proxy}/h2/pay/${i}`, { method: 'POST', body: JSON.stringify({ i }), headers: { 'content-type': 'application/json' } })),
    );
    expect(answers.every((a) => a.status === 200)).toBe(true);
    // With 4 connections at most, more than 4 at once at the vendor means streams side by side on one session.
    expect(h2only.maxConcurrent).toBeGreaterThan(4);
  });

  it('http2: true against a vendor that only speaks HTTP/1.1 is a typed 502 that says what to change', async () => {
    const res = await fetch(`${proxy}/h2-to-h1/x`);
    expect(res.status).toBe(502);
    const problem = (await res.json()) as { code: string; detail: string };
    expect(problem.code).toBe('UPSTREAM_UNREACHABLE');
    expect(problem.detail).toContain('did not agree to HTTP/2');
    expect(problem.detail).toContain('http2: auto');
  });

  it('streams a request body over h2 and keeps repeated response headers', async () => {
    const body = Buffer.alloc(256 * 1024, 7);
    const res = await fetch(`${proxy}/h2/upload`, { method: 'POST', body, headers: { 'content-type': 'application/octet-stream' } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as Seen).bodyBytes).toBe(body.length);
    expect(res.headers.getSetCookie()).toEqual(['a=1', 'b=2']);
  });

  it('replays once over h2 when the vendor answers 401, with a new token', async () => {
    const callsBefore = idp.calls;
    h2only.refuseNext(1);
    const res = await fetch(`${proxy}/h2/after-401`, { method: 'POST', body: 'x=1' });
    expect(res.status).toBe(200);
    expect(idp.calls - callsBefore).toBe(1);
    const tries = h2only.seen.filter((s) => s.path === '/v1/after-401');
    expect(tries).toHaveLength(2);
    expect(tries[0]?.authorization).not.toBe(tries[1]?.authorization);
  });

  it('without http2, an h2-only vendor is a typed 502 (HTTP/1.1 is not offered by the vendor)', async () => {
    const res = await fetch(`${proxy}/h1/x`);
    expect(res.status).toBe(502);
    expect(((await res.json()) as { code: string }).code).toBe('UPSTREAM_UNREACHABLE');
  });

  it('auto picks h2 where offered; the default stays HTTP/1.1 on the same vendor', async () => {
    const viaAuto = (await (await fetch(`${proxy}/auto/v`)).json()) as Seen;
    const viaDefault = (await (await fetch(`${proxy}/h1both/v`)).json()) as Seen;
    expect(viaAuto.httpVersion).toBe('2.0');
    expect(viaDefault.httpVersion).toBe('1.1');
  });
});
