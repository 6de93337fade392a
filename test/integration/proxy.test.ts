/**
 * The sidecar end to end, in-process, between the real stand-in servers: a fake token endpoint and an echo vendor
 * on port 0. No HTTP mocks: every request crosses real sockets.
 */
import { waitUntil } from '../helpers/wait.js';
import { createHash, randomBytes } from 'node:crypto';
import http, { type IncomingHttpHeaders } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { loadConfigText } from '../../src/config/load.js';
import { startEchoVendor, vendorBytes, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { createLogger } from '../../src/log.js';
import { Sidecar } from '../../src/sidecar.js';
import { fingerprintOf } from '../../src/core/token.js';
import { recordLines } from '../helpers/log-capture.js';

const CLIENT_ID = 'proxy-test-client';
const CLIENT_SECRET = 'Pr0xy-Test-Client-Secret-7781';

/** Every log line any sidecar of this file wrote, and every token any fake IdP issued: grepped at the end. */
const logLines: string[] = [];
const issuedTokens: string[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

/** A vendor of the test's own (closed after the test): its port. */
async function ownUpstream(handler: http.RequestListener): Promise<number> {
  const upstream = http.createServer(handler);
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        upstream.closeAllConnections();
        upstream.close(() => resolve());
      }),
  );
  return (upstream.address() as AddressInfo).port;
}

let client: Agent;
beforeEach(() => {
  client = new Agent({ connections: 256 });
  cleanups.push(() => client.destroy());
});

afterEach(async () => {
  // Everything in parallel and settled: one failing close must not leave the others open.
  await Promise.allSettled(cleanups.splice(0).map((close) => close()));
});

afterAll(() => {
  expect(logLines.length).toBeGreaterThan(0);
  for (const line of logLines) {
    expect(line).not.toContain(CLIENT_SECRET);
    for (const token of issuedTokens) expect(line).not.toContain(token);
  }
});

async function idpWith(opts: Parameters<typeof startFakeIdp>[0] = {}): Promise<FakeIdp> {
  const idp = await startFakeIdp({ clients: { [CLIENT_ID]: CLIENT_SECRET }, ...opts });
  cleanups.push(async () => {
    issuedTokens.push(...idp.issued);
    await idp.close();
  });
  return idp;
}

async function vendorWith(opts: Parameters<typeof startEchoVendor>[0] = {}): Promise<EchoVendor> {
  const vendor = await startEchoVendor(opts);
  cleanups.push(() => vendor.close());
  return vendor;
}

type Json = Record<string, unknown>;

function oauthRoute(idp: FakeIdp, upstream: string, over: { route?: Json; auth?: Json } = {}): Json {
  return {
    name: 'pix',
    match: { pathPrefix: '/pix' },
    upstream,
    auth: { type: 'oauth2', tokenUrl: idp.url, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, scopes: ['cob.read', 'cob.write'], ...over.auth },
    ...over.route,
  };
}

/** A sidecar on port 0 from YAML text, through the real config loader, logging into `lines` (and `logLines`). */
async function sidecarWith(routes: Json[]): Promise<{ sidecar: Sidecar; base: string; port: number; lines: string[] }> {
  const yaml = stringify({ version: 1, listen: '127.0.0.1:0', admin: '127.0.0.1:0', drainTimeout: '1s', routes });
  const loaded = await loadConfigText(yaml);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const lines: string[] = [];
  const log = createLogger({
    level: 'debug',
    destination: {
      write: (line: string) => {
        lines.push(line);
        logLines.push(line);
        recordLines(line);
      },
    },
  });
  const sidecar = await Sidecar.start({ config: loaded.config, log });
  cleanups.push(() => sidecar.stop(500));
  return { sidecar, base: sidecar.proxyUrl, port: Number(new URL(sidecar.proxyUrl).port), lines };
}

/** The usual stack: fake IdP, echo vendor, sidecar with route pix (/pix → vendor/v2). */
async function stack(over: { route?: Json; auth?: Json; idp?: Parameters<typeof startFakeIdp>[0]; vendor?: Parameters<typeof startEchoVendor>[0] } = {}) {
  const idp = await idpWith(over.idp);
  const vendor = await vendorWith(over.vendor);
  const s = await sidecarWith([oauthRoute(idp, `${vendor.url}/v2`, over)]);
  return { idp, vendor, ...s };
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  json: () => Json;
}

async function send(url: string, init: { method?: string; headers?: Record<string, string>; body?: Buffer | string } = {}): Promise<Answer> {
  const res = await request(url, { dispatcher: client, method: (init.method ?? 'GET') as 'GET', headers: init.headers, body: init.body ?? null });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers as IncomingHttpHeaders, body, json: () => JSON.parse(body.toString('utf8')) as Json };
}

/** node:http, for what undici would normalise: raw header lists, absolute-form targets, chunked uploads. */
function rawHttp(
  port: number,
  opts: { method?: string; path: string; headers?: string[]; chunks?: Buffer[]; body?: Buffer; signal?: AbortSignal },
): Promise<Answer & { rawHeaders: string[] }> {
  // With a header list node:http adds no Host of its own, and Node's server refuses HTTP/1.1 without one.
  const given = opts.headers ?? [];
  const headers = given.some((h, i) => i % 2 === 0 && h.toLowerCase() === 'host') ? given : ['Host', `127.0.0.1:${port}`, ...given];
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path, headers, agent: false, signal: opts.signal },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body, json: () => JSON.parse(body.toString('utf8')) as Json });
        });
      },
    );
    req.on('error', reject);
    void (async () => {
      if (opts.chunks) {
        for (const chunk of opts.chunks) {
          req.write(chunk);
          await sleep(5);
        }
      }
      req.end(opts.body);
    })();
  });
}

/** Raw bytes over TCP, for requests node:http would refuse to send; reads until the server closes. */
function rawSocket(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let out = '';
    socket.setTimeout(5_000, () => socket.destroy(new Error('raw socket timed out')));
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (d: Buffer) => {
      out += d.toString('latin1');
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(out));
  });
}

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const bearer = (authorization: string | undefined) => /^Bearer (\S+)$/.exec(authorization ?? '')?.[1];

function expectProblem(answer: Answer, code: string, status: number): Json {
  expect(answer.status).toBe(status);
  expect(answer.headers['content-type']).toBe('application/problem+json');
  expect(answer.headers['x-token-sidecar-error']).toBe(code);
  const body = answer.json();
  expect(body).toMatchObject({ type: `urn:token-sidecar:error:${code}`, status, code });
  expect(typeof body['title']).toBe('string');
  expect(typeof body['detail']).toBe('string');
  return body;
}

/** A port nothing listens on (bound, read, closed). */
async function deadPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('injection', () => {
  it('adds the token, replaces the app Authorization, maps the path and keeps the query', async () => {
    const { idp, vendor, base } = await stack();
    const res = await send(`${base}/pix/cob/42?status=ATIVA&x=%2F`, { headers: { authorization: 'Bearer app-supplied', 'x-request-id': 'r-1' } });
    expect(res.status).toBe(200);
    expect(res.headers['x-vendor']).toBe('echo');
    expect(vendor.requests).toHaveLength(1);
    const seen = vendor.requests[0];
    expect(seen?.method).toBe('GET');
    expect(seen?.target).toBe('/v2/cob/42?status=ATIVA&x=%2F');
    expect(seen?.authorization).toBe(`Bearer ${idp.issued[0]}`);
    const authHeaders = (seen?.rawHeaders ?? []).filter((_, i, all) => i % 2 === 0 && all[i]?.toLowerCase() === 'authorization');
    expect(authHeaders).toHaveLength(1);
    expect(seen?.headers['x-request-id']).toBe('r-1');
    // The client-credentials grant as configured: Basic auth, scopes.
    expect(idp.calls).toBe(1);
    expect(idp.requests[0]).toMatchObject({ clientAuth: 'basic', form: { grant_type: 'client_credentials', scope: 'cob.read cob.write' } });
  });

  it('client_secret_post sends the credentials in the form', async () => {
    const { idp, vendor, base } = await stack({ auth: { clientAuth: 'client_secret_post', audience: 'https://api.vendor.example' } });
    expect((await send(`${base}/pix/x`)).status).toBe(200);
    expect(idp.requests[0]).toMatchObject({ clientAuth: 'post', form: { client_id: CLIENT_ID, audience: 'https://api.vendor.example' } });
    expect(vendor.requests[0]?.authorization).toBe(`Bearer ${idp.issued[0]}`);
  });
});

describe('bodies', () => {
  it('a 64 KiB POST body arrives byte-identical', async () => {
    const { vendor, base } = await stack();
    const payload = randomBytes(64 * 1024);
    const res = await send(`${base}/pix/upload`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: payload });
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ bodyBytes: payload.length, bodySha256: sha256(payload) });
    expect(vendor.requests[0]?.body.equals(payload)).toBe(true);
    expect(vendor.requests[0]?.headers['content-length']).toBe(String(payload.length));
  });

  it('a streamed (chunked) 64 KiB upload arrives byte-identical', async () => {
    const { vendor, port } = await stack();
    const chunks = Array.from({ length: 16 }, () => randomBytes(4096));
    const all = Buffer.concat(chunks);
    const res = await rawHttp(port, { method: 'POST', path: '/pix/upload', headers: ['Transfer-Encoding', 'chunked'], chunks });
    expect(res.status).toBe(200);
    expect(res.json()).toMatchObject({ bodyBytes: all.length, bodySha256: sha256(all) });
    expect(vendor.requests[0]?.body.equals(all)).toBe(true);
  });

  it('a 64 KiB response streams back identical, and a chunked one too', async () => {
    const { base } = await stack();
    const res = await send(`${base}/pix/__bytes/65536`);
    expect(res.status).toBe(200);
    expect(res.headers['content-length']).toBe('65536');
    expect(res.body.equals(vendorBytes(65_536))).toBe(true);
    const chunked = await send(`${base}/pix/__chunked`);
    expect(chunked.status).toBe(200);
    expect(chunked.body.toString()).toBe('chunk-0\nchunk-1\nchunk-2\n');
  });
});

describe('token caching', () => {
  it('a slow reader gets a 4 MiB answer intact (writes to the app wait for drain)', async () => {
    const { port } = await stack();
    const size = 4 * 1024 * 1024;
    const got = await new Promise<Buffer>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: `/pix/__bytes/${size}`, agent: false }, (res) => {
          const chunks: Buffer[] = [];
          res.pause();
          // Read a little at a time, so the sidecar's writes to the app fill its socket and must wait for drain.
          const tick = setInterval(() => {
            let c: Buffer | null;
            for (let i = 0; i < 4 && (c = res.read() as Buffer | null) !== null; i++) chunks.push(c);
          }, 2);
          res.on('end', () => {
            clearInterval(tick);
            resolve(Buffer.concat(chunks));
          });
          res.on('error', reject);
          res.on('readable', () => undefined);
        })
        .on('error', reject);
    });
    expect(got.length).toBe(size);
    expect(got.equals(vendorBytes(size))).toBe(true);
  });

  it('200 sequential requests → 1 token fetch', async () => {
    const { idp, vendor, base } = await stack();
    for (let i = 0; i < 200; i++) expect((await send(`${base}/pix/cob/${i}`)).status).toBe(200);
    expect(idp.calls).toBe(1);
    expect(vendor.count).toBe(200);
    expect(new Set(vendor.requests.map((r) => r.authorization))).toEqual(new Set([`Bearer ${idp.issued[0]}`]));
  });

  it('200 concurrent cold requests → 1 token fetch', async () => {
    const { idp, vendor, base } = await stack();
    idp.setDelay(200); // all 200 arrive while the one fetch is in flight
    const answers = await Promise.all(Array.from({ length: 200 }, (_, i) => send(`${base}/pix/cob/${i}`)));
    expect(answers.map((a) => a.status)).toEqual(Array<number>(200).fill(200));
    expect(idp.calls).toBe(1);
    expect(vendor.count).toBe(200);
    expect(new Set(vendor.requests.map((r) => r.authorization)).size).toBe(1);
  });

  it('tokens roll over across expiry with no failed request and no expired token used', async () => {
    // 2 s tokens; the vendor refuses any token the IdP considers expired, and the route does not replay, so a
    // single expired token would surface as a 401 here.
    const { idp, vendor, base } = await stack({ idp: { defaultExpiresInS: 2 }, route: { retryOn401: false } });
    vendor.acceptToken = (t) => idp.isValid(t);
    const statuses: number[] = [];
    const until = Date.now() + 5_000;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (Date.now() < until) {
          statuses.push((await send(`${base}/pix/cob`)).status);
          await sleep(10);
        }
      }),
    );
    expect(statuses.length).toBeGreaterThan(100);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(vendor.count).toBe(statuses.length);
    // At least two refreshes happened, each only once (single-flight), and every used token was one of them.
    expect(idp.calls).toBeGreaterThanOrEqual(3);
    expect(idp.calls).toBeLessThanOrEqual(6);
    const used = new Set(vendor.requests.map((r) => bearer(r.authorization)));
    expect(used.size).toBeGreaterThanOrEqual(3);
    for (const t of used) expect(idp.issued).toContain(t);
  });
});

describe('401 from the vendor', () => {
  it('one refresh, one replay with the same body', async () => {
    const { idp, vendor, base, lines } = await stack();
    vendor.unauthorizedNext(1);
    const body = JSON.stringify({ valor: '10.00', pad: 'x'.repeat(10_000) });
    const res = await send(`${base}/pix/cob`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    expect(res.status).toBe(200);
    expect(vendor.requests).toHaveLength(2);
    const [first, replay] = vendor.requests;
    expect(first?.body.toString()).toBe(body);
    expect(replay?.body.toString()).toBe(body);
    expect(replay?.method).toBe('POST');
    expect(replay?.target).toBe('/v2/cob');
    expect(first?.authorization).toBe(`Bearer ${idp.issued[0]}`);
    expect(replay?.authorization).toBe(`Bearer ${idp.issued[1]}`);
    expect(idp.calls).toBe(2);
    expect(res.json()).toMatchObject({ bodySha256: sha256(body) });
    expect(lines.some((l) => l.includes('"event":"request"') && l.includes('"replayed":true'))).toBe(true);
  });

  it('a persistent 401 makes exactly 2 vendor requests for the call, no loop, and the app gets the 401', async () => {
    const { idp, vendor, base } = await stack();
    vendor.acceptToken = () => false;
    const res = await send(`${base}/pix/cob`, { method: 'POST', body: '{"a":1}', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(401);
    expect(res.json()).toEqual({ error: 'invalid_token' });
    expect(res.headers['www-authenticate']).toBe('Bearer error="invalid_token"');
    expect(res.headers['x-token-sidecar-error']).toBeUndefined();
    expect(vendor.count).toBe(2);
    expect(idp.calls).toBe(2);
    await sleep(300);
    expect(vendor.count).toBe(2);
    // The next call within the interval is not replayed either.
    expect((await send(`${base}/pix/cob`)).status).toBe(401);
    expect(vendor.count).toBe(3);
  });

  it('streamed and oversized bodies are not replayed: the 401 goes back to the app', async () => {
    const { idp, vendor, base, port } = await stack({ route: { replayBodyLimit: '1KiB' } });
    // Within the limit: replayed (this also makes the current token one a 401 just brought).
    vendor.unauthorizedNext(1);
    const small = await send(`${base}/pix/small`, { method: 'POST', body: Buffer.alloc(512, 7) });
    expect(small.status).toBe(200);
    expect(vendor.count).toBe(2);
    expect(vendor.requests[1]?.body.equals(Buffer.alloc(512, 7))).toBe(true);
    expect(idp.calls).toBe(2);

    // Chunked: no content-length, so it streams and cannot be replayed.
    vendor.unauthorizedNext(1);
    const chunks = [Buffer.from('part-1;'), Buffer.from('part-2')];
    const chunked = await rawHttp(port, { method: 'POST', path: '/pix/stream', headers: ['Transfer-Encoding', 'chunked'], chunks });
    expect(chunked.status).toBe(401);
    expect(chunked.json()).toEqual({ error: 'invalid_token' });
    expect(vendor.count).toBe(3);
    expect(vendor.requests[2]?.body.toString()).toBe('part-1;part-2');

    // Sized but over replayBodyLimit: streamed too.
    vendor.unauthorizedNext(1);
    const big = await send(`${base}/pix/big`, { method: 'POST', body: Buffer.alloc(4096, 7) });
    expect(big.status).toBe(401);
    expect(vendor.count).toBe(4);
    // The token refused twice came from a 401 refresh moments ago: kept, not refreshed again.
    expect(idp.calls).toBe(2);
  });

  it('a 401 too large to hold (> 64 KiB) streams to the app intact, is not replayed, and still retires the token', async () => {
    const idp = await idpWith();
    const big = vendorBytes(200 * 1024);
    let count = 0;
    const vendor = http.createServer((req, res) => {
      count++;
      req.resume();
      req.on('end', () => {
        if (count === 1) {
          res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"', 'content-type': 'application/octet-stream', 'content-length': big.length });
          res.end(big);
        } else res.end('ok');
      });
    });
    await new Promise<void>((r) => vendor.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => vendor.close(r)));
    const { base } = await sidecarWith([oauthRoute(idp, `http://127.0.0.1:${(vendor.address() as AddressInfo).port}`)]);
    const res = await send(`${base}/pix/cob`, { method: 'POST', body: '{"a":1}' });
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer error="invalid_token"');
    expect(res.body.equals(big)).toBe(true);
    expect(count).toBe(1);
    await waitUntil(() => idp.calls === 2, 2_000, 10, 'the background refresh');
    expect((await send(`${base}/pix/next`)).status).toBe(200);
    expect(count).toBe(2);
  });

  it('a 401 on a streamed body still retires the token, so the next request carries a fresh one', async () => {
    const { idp, vendor, base, port } = await stack();
    expect((await send(`${base}/pix/warm`)).status).toBe(200);
    const first = idp.lastToken();
    vendor.unauthorizedNext(1);
    const chunked = await rawHttp(port, { method: 'POST', path: '/pix/stream', headers: ['Transfer-Encoding', 'chunked'], chunks: [Buffer.from('x')] });
    expect(chunked.status).toBe(401);
    await waitUntil(() => idp.calls === 2, 2_000, 10, 'the background refresh');
    expect((await send(`${base}/pix/next`)).status).toBe(200);
    expect(vendor.requests.at(-1)?.authorization).toBe(`Bearer ${idp.lastToken() ?? ''}`);
    expect(idp.lastToken()).not.toBe(first);
  });
});

describe('token endpoint failures', () => {
  it.each([
    ['closed', async (idp: FakeIdp) => idp.close()],
    ['500 with HTML', async (idp: FakeIdp) => idp.setBehavior({ kind: 'status', status: 500, contentType: 'text/html', body: '<html>oops</html>' })],
    ['hanging past the timeout', async (idp: FakeIdp) => idp.setBehavior({ kind: 'hang' })],
    ['429 with Retry-After', async (idp: FakeIdp) => idp.setBehavior({ kind: 'status', status: 429, retryAfter: '7' })],
  ])('token endpoint %s → 503 TOKEN_UNAVAILABLE with Retry-After', async (label, breakIt) => {
    const { idp, vendor, base } = await stack({ auth: { timeout: '300ms' } });
    await breakIt(idp);
    const started = Date.now();
    const res = await send(`${base}/pix/cob/1`);
    expect(Date.now() - started).toBeLessThan(3_000);
    const body = expectProblem(res, 'TOKEN_UNAVAILABLE', 503);
    expect(body['route']).toBe('pix');
    const retryAfter = Number(res.headers['retry-after']);
    expect(Number.isInteger(retryAfter)).toBe(true);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    if (label === '429 with Retry-After') expect(retryAfter).toBe(7);
    expect(vendor.count).toBe(0);
  });

  it('a still-valid token keeps being served while the endpoint fails, and 503 only once it is unusable', async () => {
    // 2 s tokens, refresh due almost at once (90%): every refresh attempt fails while the token lives.
    const { idp, vendor, base } = await stack({ idp: { defaultExpiresInS: 2 }, auth: { refreshAhead: '90%' } });
    vendor.acceptToken = (t) => idp.isValid(t);
    // One good answer, then the endpoint fails: set before the first request, so no refresh can slip in between.
    idp.setBehavior({ kind: 'status', status: 500, contentType: 'text/html', body: '<html>down</html>' });
    idp.enqueue({ kind: 'token' });
    expect((await send(`${base}/pix/a`)).status).toBe(200);
    const first = idp.issued[0];
    const served: number[] = [];
    let unavailable: Answer | undefined;
    const deadline = Date.now() + 4_000;
    while (Date.now() < deadline) {
      const res = await send(`${base}/pix/a`);
      if (res.status !== 200) {
        unavailable = res;
        break;
      }
      served.push(res.status);
      await sleep(25);
    }
    expect(served.length).toBeGreaterThan(10);
    expect(new Set(vendor.requests.map((r) => bearer(r.authorization)))).toEqual(new Set([first]));
    expect(idp.calls).toBeGreaterThanOrEqual(2); // refreshes were tried, and failed
    expect(unavailable).toBeDefined();
    if (!unavailable) return;
    expectProblem(unavailable, 'TOKEN_UNAVAILABLE', 503);
    expect(Number(unavailable.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    // Every request the vendor got carried a token it still accepted.
    expect(vendor.count).toBe(served.length + 1);
  });

  it('invalid_client → 502 TOKEN_REJECTED, and the endpoint is not called again for the next requests', async () => {
    const { idp, vendor, base } = await stack({ idp: { clients: { [CLIENT_ID]: 'a-different-secret' } } });
    for (let i = 0; i < 5; i++) {
      const res = await send(`${base}/pix/cob/${i}`);
      const body = expectProblem(res, 'TOKEN_REJECTED', 502);
      expect(String(body['detail'])).toContain('invalid_client');
    }
    expect(idp.calls).toBe(1);
    expect(vendor.count).toBe(0);
  });
});

describe('headers', () => {
  it('hop-by-hop, Connection-named and Proxy-Authorization are stripped both ways; casing and duplicates kept', async () => {
    const { idp, vendor, port } = await stack();
    const res = await rawHttp(port, {
      path: '/pix/h',
      headers: [
        'Connection', 'keep-alive, X-Conn-Named',
        'X-Conn-Named', 'drop-me',
        'Keep-Alive', 'timeout=5',
        'Proxy-Connection', 'keep-alive',
        'Proxy-Authorization', 'Basic cHJveHk6cHJveHktcGFzcw==',
        'TE', 'trailers',
        'X-Test-Hop', '1',
        'X-A', '1',
        'x-a', '2',
        'X-Custom-Case', 'Kept',
        'Authorization', 'Bearer app-supplied',
      ],
    });
    expect(res.status).toBe(200);
    const raw = vendor.requests[0]?.rawHeaders ?? [];
    const names = raw.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    for (const gone of ['x-conn-named', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te']) expect(names).not.toContain(gone);
    expect(names.filter((n) => n === 'host')).toHaveLength(1);
    expect(vendor.requests[0]?.headers.host).toBe(`127.0.0.1:${vendor.port}`);
    const pairs = raw.flatMap((v, i) => (i % 2 === 0 ? [`${v}: ${raw[i + 1]}`] : []));
    expect(pairs).toEqual(expect.arrayContaining(['X-A: 1', 'x-a: 2', 'X-Custom-Case: Kept', `authorization: Bearer ${idp.issued[0]}`]));
    expect(JSON.stringify(raw)).not.toContain('app-supplied');
    // Response side: the vendor's `Connection: keep-alive, x-hop` and `x-hop` never reach the app.
    expect(res.headers['x-hop']).toBeUndefined();
    expect(String(res.headers['connection'] ?? '')).not.toMatch(/x-hop/i);
    expect(res.headers['x-vendor']).toBe('echo');
  });

  it('two Host headers → 400 BAD_REQUEST, nothing fetched or forwarded', async () => {
    const { idp, vendor, port } = await stack();
    const out = await rawSocket(port, 'GET /pix/x HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n');
    expect(out).toMatch(/^HTTP\/1\.1 400 /);
    expect(out.toLowerCase()).toContain('x-token-sidecar-error: bad_request');
    expect(out).toContain('application/problem+json');
    expect(vendor.count).toBe(0);
    expect(idp.calls).toBe(0);
  });

  it('CONNECT → 405 TUNNEL_NOT_SUPPORTED', async () => {
    const { idp, vendor, port } = await stack();
    const out = await rawSocket(port, 'CONNECT api.vendor.example:443 HTTP/1.1\r\nHost: api.vendor.example:443\r\n\r\n');
    expect(out).toMatch(/^HTTP\/1\.1 405 /);
    expect(out).toContain('x-token-sidecar-error: TUNNEL_NOT_SUPPORTED');
    expect(out).toContain('"code":"TUNNEL_NOT_SUPPORTED"');
    expect(vendor.count).toBe(0);
    expect(idp.calls).toBe(0);
  });
});

describe('routing', () => {
  it('unmatched → 404 ROUTE_NOT_FOUND', async () => {
    const { idp, vendor, base } = await stack();
    expectProblem(await send(`${base}/unknown/x`), 'ROUTE_NOT_FOUND', 404);
    expectProblem(await send(`${base}/pixel`), 'ROUTE_NOT_FOUND', 404);
    expect(vendor.count).toBe(0);
    expect(idp.calls).toBe(0);
  });

  it('traversal never escapes the base path', async () => {
    const { vendor, base, port } = await stack();
    for (const target of ['/pix/%2e%2e/x', '/pix/%2E%2E/x', '/pix/.%2e/x', '/pix/a%2fb', '/pix/a%5cb', '/pix/..;/x', '/pix/%zz']) {
      expectProblem(await rawHttp(port, { path: target }), 'BAD_REQUEST', 400);
    }
    expect(vendor.count).toBe(0);
    expect((await rawHttp(port, { path: '/pix//evil.example/x' })).status).toBe(200);
    expect((await send(`${base}/pix/ok/`)).status).toBe(200);
    expect(vendor.requests.map((r) => r.target)).toEqual(['/v2/evil.example/x', '/v2/ok/']);
  });

  it('absolute-form works through a host route; another host → 404 and the vendor sees nothing', async () => {
    const idp = await idpWith();
    const vendor = await vendorWith();
    const { port } = await sidecarWith([
      oauthRoute(idp, `${vendor.url}/v2`),
      oauthRoute(idp, `${vendor.url}/host`, { route: { name: 'vendor-host', match: { host: 'api.vendor.example' } } }),
    ]);
    const ok = await rawHttp(port, { path: 'http://api.vendor.example/cob/1?q=a%20b', headers: ['Host', 'api.vendor.example'] });
    expect(ok.status).toBe(200);
    expect(vendor.requests[0]?.target).toBe('/host/cob/1?q=a%20b');
    expect(vendor.requests[0]?.authorization).toBe(`Bearer ${idp.issued[0]}`);
    // By Host header too.
    expect((await rawHttp(port, { path: '/cob/2', headers: ['Host', 'API.vendor.example'] })).status).toBe(200);
    expect(vendor.requests[1]?.target).toBe('/host/cob/2');

    const before = vendor.count;
    for (const path of ['http://evil.example/x', 'http://evil.example/pix/x', 'https://evil.example/pix/x']) {
      expectProblem(await rawHttp(port, { path, headers: ['Host', 'evil.example'] }), 'ROUTE_NOT_FOUND', 404);
    }
    expect(vendor.count).toBe(before);
  });

  it('a redirect is passed back as 302, not followed', async () => {
    const { vendor, base } = await stack();
    const res = await send(`${base}/pix/__redirect`);
    expect(res.status).toBe(302);
    expect(res.headers['location']).toBe(`${vendor.url}/elsewhere`);
    await sleep(100);
    expect(vendor.requests.map((r) => r.target)).toEqual(['/v2/__redirect']);
  });
});

describe('connections', () => {
  it('routes to one upstream with the same settings share its keep-alive connections; other settings get their own', async () => {
    const seen: number[] = [];
    const upstreamPort = await ownUpstream((req, res) => {
      seen.push(req.socket.remotePort ?? 0);
      res.end('ok');
    });
    const origin = `http://127.0.0.1:${upstreamPort}`;
    const route = (name: string, over: Json = {}): Json => ({ name, match: { pathPrefix: `/${name}` }, upstream: origin, auth: { type: 'static', value: `key-${name}` }, ...over });
    const { base } = await sidecarWith([route('a'), route('b'), route('c', { timeouts: { response: '5s' } })]);
    for (const path of ['/a/1', '/b/1', '/a/2', '/b/2', '/c/1']) expect((await send(`${base}${path}`)).status).toBe(200);
    // Sequential requests: a and b reuse one connection; c (other timeouts) opens its own.
    expect(new Set(seen.slice(0, 4)).size).toBe(1);
    expect(seen[4]).not.toBe(seen[0]);
  });
});

describe('upstream failures', () => {
  it('upstream down → 502 UPSTREAM_UNREACHABLE', async () => {
    const idp = await idpWith();
    const { base } = await sidecarWith([oauthRoute(idp, `http://127.0.0.1:${await deadPort()}/v2`)]);
    const body = expectProblem(await send(`${base}/pix/x`), 'UPSTREAM_UNREACHABLE', 502);
    expect(body['route']).toBe('pix');
    expect(idp.calls).toBe(1);
  });

  it('slow upstream past timeouts.response → 504 UPSTREAM_TIMEOUT', async () => {
    const { vendor, base } = await stack({ route: { timeouts: { response: '300ms' } } });
    const started = Date.now();
    expectProblem(await send(`${base}/pix/__slow/3000`), 'UPSTREAM_TIMEOUT', 504);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(vendor.count).toBe(1);
  });

  it('a body that stalls past timeouts.idle → 504 UPSTREAM_TIMEOUT saying the vendor stopped sending, not that it did not answer', async () => {
    // A vendor that sends a 401's status, headers and a first chunk, then never ends: the sidecar holds a 401 back
    // for a replay (token injected, no body), so the timeout's detail still reaches the app.
    let received = 0;
    const upstreamPort = await ownUpstream((req, res) => {
      received++;
      req.resume();
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"', 'content-type': 'application/json' });
      res.write('{"error":');
    });
    const idp = await idpWith();
    const { base } = await sidecarWith([
      oauthRoute(idp, `http://127.0.0.1:${upstreamPort}/v2`, { route: { timeouts: { response: '10s', idle: '300ms' } } }),
    ]);
    const started = Date.now();
    const res = await send(`${base}/pix/cob/1`);
    const elapsedMs = Date.now() - started;
    const body = expectProblem(res, 'UPSTREAM_TIMEOUT', 504);
    const detail = String(body['detail']);
    expect(detail).toMatch(/stopped sending/);
    expect(detail).toMatch(/\b300 ms\b/);
    expect(detail).not.toMatch(/did not answer/);
    expect(body['route']).toBe('pix');
    // The idle timeout (300 ms) ended it, well before the response timeout (10 s).
    expect(elapsedMs).toBeLessThan(3_000);
    expect(received).toBe(1);
  });

  it('an app that gives up while its request waits for a token: nothing is sent to the vendor, the log says CLIENT_CLOSED', async () => {
    const { idp, vendor, port, lines } = await stack();
    idp.setDelay(400);
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    await expect(rawHttp(port, { path: '/pix/cob/1', signal: controller.signal })).rejects.toThrow();
    await waitUntil(() => idp.calls === 1, 2_000, 10, 'the token fetch');
    await sleep(500); // the token has arrived: the abandoned request would have gone out by now
    expect(vendor.count).toBe(0);
    const line = lines.map((l) => JSON.parse(l) as Json).find((e) => e['event'] === 'request');
    expect(line).toMatchObject({ route: 'pix', code: 'CLIENT_CLOSED', tokenSource: 'fetched' });
  });

  it('a client abort cancels the upstream request', async () => {
    // A vendor that reports when its request's connection closes (the echo vendor does not expose that).
    let slowReceived = 0;
    let closedEarlyAt: number | undefined;
    const upstreamPort = await ownUpstream((req, res) => {
      if (!req.url?.includes('__slow')) {
        res.end('fast');
        return;
      }
      slowReceived++;
      const timer = setTimeout(() => res.end('late'), 2_000);
      res.on('close', () => {
        clearTimeout(timer);
        if (!res.writableFinished) closedEarlyAt = Date.now();
      });
    });
    const idp = await idpWith();
    const { base, port, lines } = await sidecarWith([oauthRoute(idp, `http://127.0.0.1:${upstreamPort}/v2`)]);
    expect((await send(`${base}/pix/warm`)).status).toBe(200); // the token is cached: the slow call goes straight out

    const controller = new AbortController();
    const startedAt = Date.now();
    const pending = rawHttp(port, { path: '/pix/__slow/2000', signal: controller.signal });
    const settled = pending.then(
      () => 'answered',
      (err: unknown) => (err as Error).name,
    );
    // Abort after 100 ms, once the vendor holds the request.
    while ((slowReceived === 0 || Date.now() - startedAt < 100) && Date.now() - startedAt < 1_500) await sleep(10);
    expect(slowReceived).toBe(1);
    const abortedAt = Date.now();
    controller.abort();
    expect(await settled).toBe('AbortError');
    while (closedEarlyAt === undefined && Date.now() - abortedAt < 1_500) await sleep(20);
    expect(closedEarlyAt).toBeDefined();
    expect((closedEarlyAt ?? Infinity) - abortedAt).toBeLessThan(1_000);
    await sleep(50);
    expect(lines.some((l) => l.includes('"event":"request"') && l.includes('"code":"CLIENT_CLOSED"'))).toBe(true);
  });
});

describe('admin listener', () => {
  it('/healthz and /readyz answer', async () => {
    const { sidecar } = await stack();
    const health = await send(`${sidecar.adminUrl}/healthz`);
    expect(health.status).toBe(200);
    expect(health.json()).toEqual({ status: 'ok' });
    const ready = await send(`${sidecar.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.json()).toMatchObject({ status: 'ready', checks: { listener: 'ok', warmRoutes: 'ok' } });
    expect((await send(`${sidecar.adminUrl}/nope`)).status).toBe(404);
  });

  it('/readyz is 503 while a warm route holds no token', async () => {
    const { sidecar, idp } = await stack({ idp: { clients: { [CLIENT_ID]: 'another-secret' } }, route: { warm: true } });
    const deadline = Date.now() + 2_000;
    while (idp.calls === 0 && Date.now() < deadline) await sleep(20);
    expect(idp.calls).toBe(1); // warmed at start, and refused
    const ready = await send(`${sidecar.adminUrl}/readyz`);
    expect(ready.status).toBe(503);
    expect(ready.json()).toMatchObject({ status: 'not ready', checks: { warmRoutes: 'failing' } });
    expect((await send(`${sidecar.adminUrl}/healthz`)).status).toBe(200);
  });
});

describe('logs', () => {
  it('one line per request, token events by fingerprint, and no token value or client secret anywhere', async () => {
    const { idp, vendor, base, lines, sidecar } = await stack();
    expect((await send(`${base}/pix/a`, { headers: { authorization: 'Bearer app-own-Token-556' } })).status).toBe(200);
    vendor.unauthorizedNext(1);
    expect((await send(`${base}/pix/b`, { method: 'POST', body: 'x' })).status).toBe(200);
    // A token endpoint that echoes the secret in its error must not get it into a log line either.
    idp.setBehavior({ kind: 'oauthError', status: 401, error: 'invalid_client', description: `secret ${CLIENT_SECRET} is wrong` });
    await expect(sidecar.manager.refresh('pix')).rejects.toMatchObject({ code: 'TOKEN_REJECTED' });
    // The still-valid token keeps serving.
    expect((await send(`${base}/pix/c`)).status).toBe(200);

    const events = lines.map((l) => JSON.parse(l) as Json);
    const requests = events.filter((e) => e['event'] === 'request');
    expect(requests).toHaveLength(3);
    expect(requests[0]).toMatchObject({ route: 'pix', method: 'GET', status: 200, tokenSource: 'fetched' });
    // The cold request says how long it waited for its token; one served from memory waited for nothing.
    expect(requests[0]?.['tokenWaitMs']).toBeGreaterThan(0);
    expect(requests[0]?.['tokenWaitMs']).toBeLessThanOrEqual(Number(requests[0]?.['durationMs']));
    expect(requests[2]).toMatchObject({ tokenSource: 'memory' });
    expect(requests[2]).not.toHaveProperty('tokenWaitMs');
    expect(events.find((e) => e['event'] === 'token.fetched')).toMatchObject({ route: 'pix', fingerprint: fingerprintOf(idp.issued[0] ?? '') });
    expect(events.find((e) => e['event'] === 'token.invalidated')).toMatchObject({ fingerprint: fingerprintOf(idp.issued[0] ?? '') });
    expect(events.some((e) => e['event'] === 'token.fetch_failed' && e['oauthError'] === 'invalid_client')).toBe(true);
    expect(idp.issued.length).toBeGreaterThanOrEqual(2);
    for (const line of lines) {
      expect(line).not.toContain(CLIENT_SECRET);
      expect(line).not.toContain('app-own-Token-556');
      for (const token of idp.issued) expect(line).not.toContain(token);
    }
  });
});
