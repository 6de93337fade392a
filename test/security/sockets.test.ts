/**
 * Every socket the sidecar touches has an error path: clients that reset (RST) at any point of a CONNECT, of an
 * ordinary request or of an admin request, and clients that send malformed HTTP, never end the process.
 * Against the shipped program as a child process (dist/token-sidecar.mjs), so a crash shows as the process dying.
 */
import { execFileSync, spawn } from 'node:child_process';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { startSidecarProcess, writeConfig, type SidecarProcess } from '../helpers/sidecar-process.js';
import { answered, connectRaw, parseAnswer, processAlive, type RawConn } from './raw.js';

const CLIENT_ID = 'sockets-client';
const SECRET = 'S0ckets-Test-Secret-4411';
/** How long a slow token endpoint takes: long enough to reset a client that waits for it. */
const SLOW_IDP_DELAY_MS = 1_200;
const CONNECT_REQUEST = 'CONNECT api.vendor.example:443 HTTP/1.1\r\nHost: api.vendor.example:443\r\nUser-Agent: raw-test\r\n\r\n';

let idp: FakeIdp;
let slowIdp: FakeIdp;
let vendor: EchoVendor;
let streaming: http.Server;
let configFile: string;
const agent = new Agent({ connections: 8 });

/** A vendor whose answer streams for a few seconds (16 KiB every 10 ms), to reset a client mid-answer. */
function startStreamingVendor(): Promise<http.Server> {
  const server = http.createServer((_req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const chunk = Buffer.alloc(16 * 1024, 0x61);
    let sent = 0;
    const timer = setInterval(() => {
      if (res.destroyed || ++sent > 300) {
        clearInterval(timer);
        res.end();
        return;
      }
      res.write(chunk);
    }, 10);
    res.on('close', () => clearInterval(timer));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

beforeAll(async () => {
  idp = await startFakeIdp({ clients: { [CLIENT_ID]: SECRET } });
  slowIdp = await startFakeIdp({ clients: { [CLIENT_ID]: SECRET } });
  slowIdp.setDelay(SLOW_IDP_DELAY_MS);
  vendor = await startEchoVendor();
  streaming = await startStreamingVendor();
  const streamPort = (streaming.address() as AddressInfo).port;
  const oauth = (tokenUrl: string) => `{ type: oauth2, tokenUrl: "${tokenUrl}", clientId: ${CLIENT_ID}, clientSecret: { fromEnv: SOCKETS_SECRET } }`;
  configFile = await writeConfig(`version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
drainTimeout: 1s
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: ${vendor.url}/v2
    auth: ${oauth(idp.url)}
  - name: waits
    match: { pathPrefix: /waits }
    upstream: ${vendor.url}/v2
    auth: ${oauth(slowIdp.url)}
  - name: stream
    match: { pathPrefix: /stream }
    upstream: http://127.0.0.1:${streamPort}
    auth: { type: static, value: { fromEnv: SOCKETS_SECRET } }
`);
});

afterAll(async () => {
  streaming.closeAllConnections();
  await Promise.all([idp.close(), slowIdp.close(), vendor.close(), agent.close(), new Promise<void>((r) => streaming.close(() => r()))]);
});

let sc: SidecarProcess;
let proxyPort: number;
let adminPort: number;
beforeEach(async () => {
  sc = await startSidecarProcess(configFile, { SOCKETS_SECRET: SECRET });
  proxyPort = Number(new URL(sc.proxyUrl).port);
  adminPort = Number(new URL(sc.adminUrl).port);
});
afterEach(async () => {
  await sc.kill('SIGKILL');
});

/** The process's last lines: on a crash, Node's report of the unhandled 'error'. */
const tail = () => sc.lines.slice(-25).join('\n');

/** A CONNECT that stays connected gets the typed 405 problem+json, and then the connection is closed. */
async function expectTunnelRefused(): Promise<void> {
  const conn = await connectRaw(proxyPort);
  await conn.write(CONNECT_REQUEST);
  const answer = parseAnswer(await conn.until(answered, 5_000, 'an answer to CONNECT'));
  expect(answer?.status).toBe(405);
  expect(answer?.headers['content-type']).toBe('application/problem+json');
  expect(answer?.headers['x-token-sidecar-error']).toBe('TUNNEL_NOT_SUPPORTED');
  expect(answer?.headers['allow']).toContain('GET');
  expect(JSON.parse(answer?.body ?? '{}')).toMatchObject({ type: 'urn:token-sidecar:error:TUNNEL_NOT_SUPPORTED', status: 405, code: 'TUNNEL_NOT_SUPPORTED' });
  await conn.closed;
}

/** The process is alive, its probes answer, it forwards a normal request, and it still refuses CONNECT as it should. */
async function expectStillServing(): Promise<void> {
  // An unhandled 'error' ends the process within a tick or two of the reset.
  await sleep(150);
  expect(processAlive(sc.pid), `the sidecar process died:\n${tail()}`).toBe(true);
  const health = await request(`${sc.adminUrl}/healthz`, { dispatcher: agent });
  expect(health.statusCode).toBe(200);
  await health.body.dump();
  const res = await request(`${sc.proxyUrl}/pix/after?x=1`, { dispatcher: agent });
  expect(res.statusCode).toBe(200);
  expect(res.headers['x-vendor']).toBe('echo');
  await res.body.dump();
  await expectTunnelRefused();
  expect(processAlive(sc.pid), `the sidecar process died:\n${tail()}`).toBe(true);
  expect(sc.lines.filter((l) => /Unhandled|uncaught|ECONNRESET|EPIPE/i.test(l))).toEqual([]);
}

/** `times` connections, each handed to `act`; the resets race the server differently each time. */
async function repeat(times: number, act: (conn: RawConn) => Promise<void>, port = proxyPort): Promise<void> {
  for (let i = 0; i < times; i++) {
    try {
      const conn = await connectRaw(port);
      await act(conn);
      await conn.closed;
    } catch (err) {
      await sleep(100);
      const state = processAlive(sc.pid) ? 'alive' : `dead:\n${tail()}`;
      throw new Error(`connection ${i + 1} of ${times}: ${err instanceof Error ? err.message : String(err)} (the sidecar process: ${state})`);
    }
    // A crashed child is gone (reaped) within a few ms; check before the next connection could meet a dying one.
    await sleep(50);
    expect(processAlive(sc.pid), `the sidecar process died at connection ${i + 1} of ${times}:\n${tail()}`).toBe(true);
  }
}

describe('CONNECT, then the client resets', () => {
  it('before the request line is complete', async () => {
    await repeat(5, async (conn) => {
      await conn.write('CONNECT api.vendor.exa');
      await sleep(20);
      conn.reset();
    });
    await expectStillServing();
  });

  it('right after the CONNECT headers (before, while or after the sidecar reads them)', async () => {
    // As the write is handed to the kernel, a tick later, and once the server had the time to answer.
    for (const waitMs of [-1, 0, 1, 5]) {
      await repeat(5, async (conn) => {
        const written = conn.write(CONNECT_REQUEST).catch(() => undefined);
        if (waitMs < 0) return conn.reset();
        await written;
        if (waitMs > 0) await sleep(waitMs);
        conn.reset();
      });
    }
    await expectStillServing();
  });

  it('while the 405 is being written (at its first byte)', async () => {
    await repeat(10, async (conn) => {
      conn.socket.once('data', () => conn.reset());
      await conn.write(CONNECT_REQUEST);
    });
    await expectStillServing();
  });

  it('after the 405 (what curl does: it reads the status and resets)', async () => {
    await repeat(10, async (conn) => {
      await conn.write(CONNECT_REQUEST);
      await conn.until(answered, 5_000, 'the 405');
      conn.reset();
    });
    await expectStillServing();
  });

  it('with tunnel bytes right behind the headers (a TLS ClientHello), then a reset', async () => {
    await repeat(10, async (conn) => {
      await conn.write(Buffer.concat([Buffer.from(CONNECT_REQUEST), Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Buffer.alloc(512, 7)]));
      await conn.until(answered, 5_000, 'the 405');
      conn.reset();
    });
    await expectStillServing();
  });

  it.skipIf(!hasCurl())('curl -x http://sidecar https://… (HTTPS_PROXY in libcurl apps): 405 every time, the sidecar stays up', async () => {
    for (let i = 0; i < 10; i++) {
      const { code, connectStatus } = await curlThroughProxy(sc.proxyUrl, 'https://api.vendor.example/');
      await sleep(50);
      expect(processAlive(sc.pid), `the sidecar process died after curl run ${i + 1} (curl: exit ${code}, CONNECT status ${connectStatus}):\n${tail()}`).toBe(true);
      // curl gives up on a tunnel it cannot open (exit 56) and reports the CONNECT answer's status.
      expect({ run: i + 1, code, connectStatus }).toEqual({ run: i + 1, code: 56, connectStatus: '405' });
    }
    await expectStillServing();
  });
});

describe('ordinary requests, then the client resets', () => {
  it('mid-headers', async () => {
    await repeat(5, async (conn) => {
      await conn.write('GET /pix/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: abc');
      await sleep(20);
      conn.reset();
    });
    await expectStillServing();
  });

  it('mid-body, a body kept for a replay and a body streamed to the vendor', async () => {
    for (const length of [100_000, 4 * 1024 * 1024]) {
      await repeat(3, async (conn) => {
        await conn.write(`POST /pix/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n`);
        await conn.write(Buffer.alloc(64 * 1024, 1));
        await sleep(30);
        conn.reset();
      });
    }
    await expectStillServing();
  });

  it('while the answer streams', async () => {
    await repeat(3, async (conn) => {
      await conn.write('GET /stream/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      await conn.until((t) => t.length > 64 * 1024, 5_000, 'the first 64 KiB of the answer');
      conn.reset();
    });
    await expectStillServing();
  });

  it('while the request waits for a token', async () => {
    await repeat(3, async (conn) => {
      await conn.write('POST /waits/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello');
      await sleep(100);
      conn.reset();
    });
    // The token arrives after the clients left: those requests are dropped, not sent.
    await sleep(SLOW_IDP_DELAY_MS + 300);
    await expectStillServing();
    expect(sc.lines.some((l) => l.includes('"event":"request"') && l.includes('"code":"CLIENT_CLOSED"'))).toBe(true);
  });
});

describe('the admin listener, reset mid-request', () => {
  it('mid-headers, while /metrics is answered, and while a refresh waits for the token endpoint', async () => {
    await repeat(3, async (conn) => {
      await conn.write('GET /metr');
      await sleep(20);
      conn.reset();
    }, adminPort);
    await repeat(3, async (conn) => {
      conn.socket.once('data', () => conn.reset());
      await conn.write('GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    }, adminPort);
    await repeat(2, async (conn) => {
      await conn.write('POST /v1/routes/waits/refresh HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n');
      await sleep(100);
      conn.reset();
    }, adminPort);
    await sleep(SLOW_IDP_DELAY_MS + 300);
    await expectStillServing();
  });
});

describe('malformed HTTP (clientError)', () => {
  for (const listener of ['proxy', 'admin'] as const) {
    it(`${listener}: an unparsable request gets 400 problem+json BAD_REQUEST and the connection is closed`, async () => {
      const port = listener === 'proxy' ? proxyPort : adminPort;
      for (const bytes of ['GET /pix/a HTTP/1.1\r\nHost: 127.0.0.1\r\nNo colon here\r\n\r\n', 'HELLO\x00WORLD\r\n\r\n', 'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n']) {
        const conn = await connectRaw(port);
        await conn.write(bytes);
        const answer = parseAnswer(await conn.until(answered, 5_000, 'an answer to malformed bytes'));
        expect(answer?.status).toBe(400);
        expect(answer?.headers['content-type']).toBe('application/problem+json');
        expect(answer?.headers['x-token-sidecar-error']).toBe('BAD_REQUEST');
        expect(answer?.headers['connection']).toBe('close');
        expect(JSON.parse(answer?.body ?? '{}')).toMatchObject({ code: 'BAD_REQUEST', status: 400 });
        const { error } = await conn.closed;
        expect(error).toBeUndefined();
      }
      await expectStillServing();
    });
  }

  it('headers over the size limit get 431 and the connection is closed; garbage then a reset is survived', async () => {
    const conn = await connectRaw(proxyPort);
    await conn.write(`GET /pix/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    const answer = parseAnswer(await conn.until(answered, 5_000, 'an answer to oversized headers'));
    expect(answer?.status).toBe(431);
    await conn.closed;
    for (const port of [proxyPort, adminPort]) {
      await repeat(5, async (c) => {
        c.socket.once('data', () => c.reset());
        await c.write('\x16\x03\x01 not http at all\r\n\r\n');
      }, port);
    }
    await expectStillServing();
  });
});

function hasCurl(): boolean {
  try {
    execFileSync('curl', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function curlThroughProxy(proxy: string, url: string): Promise<{ code: number | null; connectStatus: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('curl', ['-s', '-o', '/dev/null', '-m', '5', '-x', proxy, '-w', '%{http_connect}', url], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => (out += d));
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, connectStatus: out.trim() }));
  });
}
