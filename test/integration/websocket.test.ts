/**
 * WebSocket through a route, end to end and in-process: `ws` clients → sidecar → a real `ws` vendor that checks the
 * token on every handshake, with a fake token endpoint. No mocks: every byte crosses real sockets.
 */
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { createProxyServer } from 'http-proxy-3';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { waitUntil } from '../helpers/wait.js';
import {
  closed, echo, handshakeRequest, logged, measureEcho, openWs, rawExchange, Refused, startSidecarWith, startWsVendor,
  type InProcessSidecar, type Json, type WsVendor,
} from '../helpers/websocket.js';
import type { SidecarOptions } from '../../src/sidecar.js';

const CLIENT_ID = 'ws-client';
const SECRET = 'Ws-Test-Secret-4471';
const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  await Promise.allSettled(cleanups.splice(0).map((c) => c()));
});

interface Stack {
  idp: FakeIdp;
  vendor: WsVendor;
  sc: InProcessSidecar;
  /** `ws://…/ws/stream` through the websocket route. */
  wsUrl: string;
}

/** Route `ws` (/ws → vendor/v1, websocket: true, oauth2) and route `plain` (/plain → vendor, websocket not set). */
async function stack(over: { route?: Json; auth?: Json; expiresInS?: number; limits?: SidecarOptions['limits'] } = {}): Promise<Stack> {
  const idp = await startFakeIdp({ clients: { [CLIENT_ID]: SECRET }, ...(over.expiresInS ? { defaultExpiresInS: over.expiresInS } : {}) });
  const vendor = await startWsVendor();
  cleanups.push(() => idp.close(), () => vendor.close());
  const auth = { type: 'oauth2', tokenUrl: idp.url, clientId: CLIENT_ID, clientSecret: SECRET, ...over.auth };
  const sc = await startSidecarWith(
    [
      { name: 'ws', match: { pathPrefix: '/ws' }, upstream: `${vendor.url}/v1`, websocket: true, auth, ...over.route },
      { name: 'plain', match: { pathPrefix: '/plain' }, upstream: vendor.url, auth },
    ],
    over.limits,
  );
  cleanups.unshift(() => sc.stop());
  return { idp, vendor, sc, wsUrl: `${sc.base.replace('http:', 'ws:')}/ws/stream` };
}

async function opened(url: string) {
  const ws = await openWs(url);
  cleanups.unshift(async () => ws.terminate());
  return ws;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const bearer = (h: string | undefined) => /^(?:Bearer|DPoP) (\S+)$/.exec(h ?? '')?.[1];

/** The sidecar still serves: a plain request and a new websocket both work. */
async function stillServes(s: Stack): Promise<void> {
  const res = await request(`${s.sc.base}/plain/ping`);
  expect(res.statusCode).toBe(200);
  expect(((await res.body.json()) as Json)['path']).toBe('/ping');
  const ws = await opened(s.wsUrl);
  expect((await echo(ws, 'still here')).toString()).toBe('still here');
}

describe('websocket through a route', () => {
  it('echoes text and binary, with the token on the handshake and the path joined as for a request', async () => {
    const s = await stack();
    const ws = await opened(`${s.wsUrl}?room=7`);
    expect((await echo(ws, 'hello')).toString()).toBe('hello');
    const bin = randomBytes(300);
    expect((await echo(ws, bin)).equals(bin)).toBe(true);
    expect(s.vendor.handshakes).toEqual([{ authorization: `Bearer ${s.idp.lastToken()}`, dpop: undefined, path: '/v1/stream?room=7', status: 101 }]);
    expect(logged(s.sc.lines, 'request')).toMatchObject([{ route: 'ws', status: 101, tokenSource: 'fetched' }]);
  });

  it('carries 1 MiB messages both ways, several at once, intact', async () => {
    const s = await stack();
    const ws = await opened(s.wsUrl);
    const messages = Array.from({ length: 8 }, () => randomBytes(1024 * 1024));
    const got: Buffer[] = [];
    const all = new Promise<void>((resolve) => ws.on('message', (m: Buffer) => got.push(m).valueOf() === messages.length && resolve()));
    for (const m of messages) ws.send(m);
    await all;
    expect(got.map(sha)).toEqual(messages.map(sha));
  });

  it('1 000 concurrent sockets all echo, then all close, leaving no socket behind on either side', async () => {
    const s = await stack();
    const sockets = await Promise.all(Array.from({ length: 1_000 }, () => opened(s.wsUrl)));
    expect(s.vendor.clients.size).toBe(1_000);
    const answers = await Promise.all(sockets.map((ws, i) => echo(ws, `n${i}`)));
    expect(answers.map(String)).toEqual(sockets.map((_, i) => `n${i}`));
    // One token for all 1 000 handshakes (single-flight), each checked by the vendor.
    expect(s.idp.calls).toBe(1);
    await Promise.all(sockets.map((ws) => (ws.close(1000), closed(ws))));
    await waitUntil(async () => s.vendor.clients.size === 0 && (await s.vendor.connections()) === 0 && (await s.sc.connections()) === 0, 10_000, 50, 'all sockets closed');
    expect(logged(s.sc.lines, 'websocket.closed')).toHaveLength(1_000);
  });

  it('a vendor-side close reaches the app with its code; an app-side close reaches the vendor with its code', async () => {
    const s = await stack();
    const a = await opened(s.wsUrl);
    const byVendor = closed(a);
    a.send('close:4001');
    expect(await byVendor).toEqual({ code: 4001, reason: 'vendor says bye' });

    const b = await opened(s.wsUrl);
    const serverSide = [...s.vendor.clients][0];
    expect(serverSide).toBeDefined();
    const atVendor = new Promise<number>((resolve) => serverSide?.once('close', (code: number) => resolve(code)));
    b.close(4002, 'app says bye');
    expect(await atVendor).toBe(4002);
    await waitUntil(() => logged(s.sc.lines, 'websocket.closed').length === 2, 5_000, 20, 'both logged');
    expect(logged(s.sc.lines, 'websocket.closed').map((l) => l['end'])).toEqual(['closed', 'closed']);
    expect(await s.sc.connections()).toBe(0);
  });

  it('open sockets outlive their token: after refreshes they still echo, and new handshakes carry the new token', async () => {
    // 2 s tokens, and a vendor that accepts only tokens the IdP still considers valid.
    const s = await stack({ expiresInS: 2 });
    s.vendor.acceptToken = (t) => s.idp.isValid(t);
    const early = await Promise.all(Array.from({ length: 5 }, () => opened(s.wsUrl)));
    const first = s.idp.lastToken() as string;
    await waitUntil(() => !s.idp.isValid(first) && s.idp.calls >= 2, 8_000, 50, 'the first token expired and was replaced');
    for (const ws of early) expect((await echo(ws, 'after expiry')).toString()).toBe('after expiry');
    const late = await opened(s.wsUrl);
    expect((await echo(late, 'new')).toString()).toBe('new');
    const lateToken = bearer(s.vendor.handshakes.at(-1)?.authorization);
    expect(lateToken).not.toBe(first);
    expect(s.idp.issued).toContain(lateToken);
    expect(s.vendor.handshakes.map((h) => h.status)).toEqual(Array<number>(6).fill(101));
  });

  it('a 401 on the handshake: one refresh, one retry, and the connection works', async () => {
    const s = await stack();
    s.vendor.acceptToken = (t) => s.idp.isValid(t);
    // The token in memory is revoked at the vendor before the app connects.
    const warm = await request(`${s.sc.base}/plain/warm`);
    await warm.body.dump();
    s.idp.revokeAll();
    const ws = await opened(s.wsUrl);
    expect((await echo(ws, 'after retry')).toString()).toBe('after retry');
    expect(s.idp.calls).toBe(2);
    expect(s.vendor.handshakes.map((h) => h.status)).toEqual([401, 101]);
    expect(bearer(s.vendor.handshakes[1]?.authorization)).toBe(s.idp.issued[1]);
    expect(logged(s.sc.lines, 'request').at(-1)).toMatchObject({ route: 'ws', status: 101, replayed: true });
  });

  it('a second 401 goes to the app as the vendor sent it; so does any other refusal, without a retry', async () => {
    const s = await stack();
    s.vendor.acceptToken = () => false;
    const refused = await openWs(s.wsUrl).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(Refused);
    expect(refused).toMatchObject({ status: 401, body: '{"error":"invalid_token"}', headers: { 'x-vendor': 'yes', 'www-authenticate': 'Bearer error="invalid_token"' } });
    expect(s.vendor.handshakes.map((h) => h.status)).toEqual([401, 401]);

    s.vendor.acceptToken = () => true;
    s.vendor.enqueue({ kind: 'status', status: 403, body: 'not your stream' });
    const forbidden = await openWs(s.wsUrl).catch((e: unknown) => e);
    expect(forbidden).toMatchObject({ status: 403, body: 'not your stream', headers: { 'x-vendor': 'yes' } });
    expect(s.vendor.handshakes.map((h) => h.status)).toEqual([401, 401, 403]);
  });

  it('a route without websocket: true refuses the upgrade with 400 UPGRADE_NOT_ALLOWED; no route → 404', async () => {
    const s = await stack();
    const refused = await openWs(`${s.sc.base.replace('http:', 'ws:')}/plain/stream`).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(Refused);
    const r = refused as Refused;
    expect(r.status).toBe(400);
    expect(r.headers['content-type']).toBe('application/problem+json');
    expect(r.headers['x-token-sidecar-error']).toBe('UPGRADE_NOT_ALLOWED');
    const body = JSON.parse(r.body) as Json;
    expect(body).toMatchObject({ code: 'UPGRADE_NOT_ALLOWED', status: 400, route: 'plain' });
    expect(String(body['detail'])).toContain('websocket: true');
    const missing = await openWs(`${s.sc.base.replace('http:', 'ws:')}/nowhere`).catch((e: unknown) => e);
    expect(missing).toMatchObject({ status: 404, headers: { 'x-token-sidecar-error': 'ROUTE_NOT_FOUND' } });
    expect(s.vendor.handshakes).toEqual([]);
  });

  it('an h2c upgrade (Java HttpClient, curl --http2) is served as HTTP/1.1, body and pipelined request included', async () => {
    const s = await stack();
    const h2c = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';
    const host = `Host: 127.0.0.1:${s.sc.port}\r\n`;
    const { socket, text } = await rawExchange(
      s.sc.port,
      `POST /plain/one HTTP/1.1\r\n${host}${h2c}Content-Length: 5\r\n\r\nhello` + `GET /plain/two HTTP/1.1\r\n${host}Connection: close\r\n\r\n`,
      { until: '/two' },
    );
    socket.destroy();
    expect(text.startsWith('HTTP/1.1 200 OK')).toBe(true);
    expect(text).not.toContain('101');
    expect(text).toContain('"path":"/one"');
    expect(text).toContain('"path":"/two"');
    expect(text).toContain(`"authorization":"Bearer ${s.idp.lastToken()}"`);
  });

  it('a DPoP route sends a proof for the handshake GET (htm, htu of the vendor URL, ath)', async () => {
    const s = await stack({ auth: { dpop: {} } });
    const ws = await opened(s.wsUrl);
    expect((await echo(ws, 'bound')).toString()).toBe('bound');
    const h = s.vendor.handshakes[0];
    expect(h?.authorization?.startsWith('DPoP ')).toBe(true);
    const claims = JSON.parse(Buffer.from(h?.dpop?.split('.')[1] ?? '', 'base64url').toString()) as Json;
    expect(claims).toMatchObject({ htm: 'GET', htu: `${s.vendor.url}/v1/stream` });
    expect(typeof claims['ath']).toBe('string');
  });
});

describe('resets and timeouts', () => {
  it('the app resets mid-handshake: the vendor side is let go, and the sidecar serves on', async () => {
    const s = await stack();
    s.vendor.enqueue({ kind: 'hang' });
    const raw = net.connect(s.sc.port, '127.0.0.1');
    raw.on('error', () => undefined);
    raw.write(handshakeRequest(s.sc.port, '/ws/y'));
    await waitUntil(() => s.vendor.handshakes.length === 1, 5_000, 20, 'handshake at the vendor');
    raw.resetAndDestroy();
    await waitUntil(() => logged(s.sc.lines, 'request').some((l) => l['code'] === 'CLIENT_CLOSED' && l['status'] === 499), 5_000, 20, 'CLIENT_CLOSED logged');
    await waitUntil(async () => (await s.vendor.connections()) === 0, 5_000, 20, 'the handshake to the vendor aborted');
    await stillServes(s);
  });

  it('the vendor resets mid-handshake: the app gets 502 UPSTREAM_UNREACHABLE', async () => {
    const s = await stack();
    s.vendor.enqueue({ kind: 'reset' });
    const refused = await openWs(s.wsUrl).catch((e: unknown) => e);
    expect(refused).toMatchObject({ status: 502, headers: { 'x-token-sidecar-error': 'UPSTREAM_UNREACHABLE' } });
    await stillServes(s);
  });

  it('either side resets mid-stream: the other side is closed, and the sidecar serves on', async () => {
    const s = await stack();
    // The app resets (raw TCP client, RST after the 101).
    const { socket, text } = await rawExchange(s.sc.port, handshakeRequest(s.sc.port, '/ws/raw'));
    expect(text.startsWith('HTTP/1.1 101 Switching Protocols')).toBe(true);
    expect(text).toMatch(/sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/i);
    await waitUntil(() => s.vendor.clients.size === 1, 5_000, 20, 'vendor side open');
    socket.resetAndDestroy();
    await waitUntil(() => s.vendor.clients.size === 0, 5_000, 20, 'vendor side closed after the app reset');
    // The vendor resets.
    const ws = await opened(s.wsUrl);
    const gone = closed(ws);
    s.vendor.upgraded.at(-1)?.resetAndDestroy();
    expect((await gone).code).toBe(1006);
    await waitUntil(async () => (await s.sc.connections()) === 0, 5_000, 20, 'sidecar sockets closed');
    await waitUntil(() => logged(s.sc.lines, 'websocket.closed').length === 2, 5_000, 20, 'both logged');
    expect(logged(s.sc.lines, 'websocket.closed')).toMatchObject([{ end: 'reset', first: 'app' }, { end: 'reset', first: 'vendor' }]);
    await stillServes(s);
  });

  it('timeouts.idle closes a silent socket; on a streaming route it stays open, past the app listener timeouts too', async () => {
    const limits = { proxy: { headersTimeoutMs: 300, requestTimeoutMs: 300, keepAliveTimeoutMs: 200, timeoutCheckIntervalMs: 100 } };
    const quiet = await stack({ route: { timeouts: { idle: '300ms' } } });
    const a = await opened(quiet.wsUrl);
    const cut = closed(a);
    expect((await echo(a, 'then silence')).toString()).toBe('then silence');
    expect((await cut).code).toBe(1006);
    await waitUntil(() => logged(quiet.sc.lines, 'websocket.closed').some((l) => l['end'] === 'idle'), 5_000, 20, 'idle logged');

    const live = await stack({ route: { timeouts: { idle: '300ms' }, streaming: true }, limits });
    const b = await opened(live.wsUrl);
    await sleep(1_200);
    expect((await echo(b, 'still open')).toString()).toBe('still open');
  });

  it('closeUpgrades() (shutdown) closes every open socket, which the listener cannot reach itself', async () => {
    const s = await stack();
    const ws = await opened(s.wsUrl);
    const gone = closed(ws);
    s.sc.sidecar['handler'].closeUpgrades();
    expect((await gone).code).toBe(1006);
    await waitUntil(() => s.vendor.clients.size === 0, 5_000, 20, 'vendor side closed');
    await waitUntil(() => logged(s.sc.lines, 'websocket.closed').some((l) => l['end'] === 'shutdown'), 5_000, 20, 'shutdown logged');
  });
});

/**
 * The measurement behind the implementation choice (docs/streaming.md): the sidecar's own upgrade vs a bare
 * http-proxy-3 that adds the same header, on the same vendor. Opt-in: `WS_BENCH=1 npx vitest run test/integration/websocket.test.ts -t bench`.
 */
describe.runIf(process.env['WS_BENCH'] === '1')('bench', () => {
  it('handshake latency and echo round trips, 100 sockets', { timeout: 120_000 }, async () => {
    const s = await stack();
    const token = (await (await request(`${s.sc.base}/plain/t`)).body.json()) as Json;
    const authorization = String(token['authorization']);
    const proxy = createProxyServer({ target: s.vendor.url, ws: true, headers: { authorization } });
    proxy.on('error', () => undefined);
    const server = http.createServer((_q, r) => r.end());
    server.on('upgrade', (req: http.IncomingMessage, socket, head: Buffer) => {
      socket.on('error', () => undefined);
      req.url = `/v1${(req.url ?? '/').replace(/^\/ws/, '')}`;
      proxy.ws(req, socket, head);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => server.close(resolve)));
    const viaHp3 = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws/stream`;
    const rows: Record<string, unknown>[] = [];
    for (let round = 0; round < 3; round++) {
      for (const [name, url] of [['sidecar', s.wsUrl], ['http-proxy-3', viaHp3], ['direct', `${s.vendor.url.replace('http:', 'ws:')}/v1/stream`]] as const) {
        rows.push({ name, round, ...(await measureEcho(url, 100, 3_000, name === 'direct' ? { authorization } : undefined)) });
      }
    }
    console.table(rows);
    expect(rows).toHaveLength(9);
  });
});
