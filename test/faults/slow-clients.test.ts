/**
 * Slow and idle clients are bounded by the listeners' own limits, not Node's defaults: headers that trickle in
 * (slowloris) and bodies that trickle in get 408 and are closed, idle keep-alive connections are closed, connections
 * past the cap are refused, and a refused CONNECT whose client never closes does not hold its socket (or a drain).
 * Small limits through Sidecar.start's overrides; the production defaults once, against the shipped program.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { LAST_ANSWER_LINGER_MS } from '../../src/http/problem.js';
import {
  ADMIN_HEADERS_TIMEOUT_MS,
  ADMIN_MAX_CONNECTIONS,
  PROXY_HEADERS_TIMEOUT_MS,
  PROXY_KEEP_ALIVE_TIMEOUT_MS,
  PROXY_MAX_CONNECTIONS,
  PROXY_REQUEST_TIMEOUT_MS,
} from '../../src/config/limits.js';
import { TIMEOUT_CHECK_INTERVAL_MS } from '../../src/sidecar.js';
import { startSidecarProcess, writeConfig, type SidecarProcess } from '../helpers/sidecar-process.js';
import { answered, connectRaw, drip, parseAnswer, type RawConn } from '../security/raw.js';
import { startStack, type Stack } from '../security/stack.js';

const stacks: Stack[] = [];
const aborts: AbortController[] = [];
afterEach(async () => {
  for (const a of aborts.splice(0)) a.abort();
  await Promise.all(stacks.splice(0).map((s) => s.close()));
});
async function stack(opts: Parameters<typeof startStack>[0] = {}): Promise<Stack> {
  const s = await startStack(opts);
  stacks.push(s);
  return s;
}
function stopper(): AbortSignal {
  const a = new AbortController();
  aborts.push(a);
  return a.signal;
}

/** Small timeouts, checked every 100 ms, so each limit is seen within a second or two. */
const FAST = { headersTimeoutMs: 600, requestTimeoutMs: 1_200, keepAliveTimeoutMs: 1_000, timeoutCheckIntervalMs: 100 };

/** Headers one byte every 50 ms: they would take ~50 s to complete. */
const SLOW_HEAD = `GET /pix/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ${'d'.repeat(1_000)}\r\n\r\n`;

/** Drip `SLOW_HEAD`; resolve with the sidecar's answer and how long after the first byte the connection was closed. */
async function slowloris(port: number, timeoutMs: number): Promise<{ status: number | undefined; closedAfterMs: number }> {
  const conn = await connectRaw(port);
  const startMs = performance.now();
  void drip(conn, SLOW_HEAD, 50, stopper());
  const text = await conn.until(answered, timeoutMs, `an answer to headers dripped for ${timeoutMs} ms`);
  const { atMs } = await conn.closed;
  return { status: parseAnswer(text)?.status, closedAfterMs: atMs - startMs };
}

/** The shipped program with one static route (its vendor is never reached here), and `extra` top-level YAML. */
async function startShipped(extra = ''): Promise<SidecarProcess> {
  const file = await writeConfig(`version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
${extra}routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: http://127.0.0.1:9/v2
    auth: { type: static, value: { fromEnv: SLOW_SECRET } }
`);
  return startSidecarProcess(file, { SLOW_SECRET: 'k' });
}

describe('headersTimeout: a slowloris is cut', () => {
  it('on the app listener: 408 and closed at headersTimeout (+ the check interval)', async () => {
    const { proxyPort } = await stack({ limits: { proxy: FAST } });
    const { status, closedAfterMs } = await slowloris(proxyPort, 3_000);
    expect(status).toBe(408);
    expect(closedAfterMs).toBeGreaterThanOrEqual(FAST.headersTimeoutMs - 50);
    expect(closedAfterMs).toBeLessThan(FAST.headersTimeoutMs + FAST.timeoutCheckIntervalMs + 500);
  });

  it('on the admin listener too', async () => {
    const { adminPort } = await stack({ limits: { admin: FAST } });
    const { status, closedAfterMs } = await slowloris(adminPort, 3_000);
    expect(status).toBe(408);
    expect(closedAfterMs).toBeLessThan(FAST.headersTimeoutMs + FAST.timeoutCheckIntervalMs + 500);
  });

  it(
    'the shipped program, on its production defaults: the app listener at PROXY_HEADERS_TIMEOUT_MS, the admin listener at ADMIN_HEADERS_TIMEOUT_MS',
    async () => {
      const sc = await startShipped();
      try {
        const slack = TIMEOUT_CHECK_INTERVAL_MS + 1_500;
        const [proxy, admin] = await Promise.all([
          slowloris(Number(new URL(sc.proxyUrl).port), PROXY_HEADERS_TIMEOUT_MS + slack),
          slowloris(Number(new URL(sc.adminUrl).port), ADMIN_HEADERS_TIMEOUT_MS + slack),
        ]);
        expect(proxy.status).toBe(408);
        expect(proxy.closedAfterMs).toBeGreaterThanOrEqual(PROXY_HEADERS_TIMEOUT_MS - 100);
        expect(admin.status).toBe(408);
        expect(admin.closedAfterMs).toBeGreaterThanOrEqual(ADMIN_HEADERS_TIMEOUT_MS - 100);
        expect(admin.closedAfterMs).toBeLessThan(ADMIN_HEADERS_TIMEOUT_MS + slack);
      } finally {
        await sc.kill('SIGKILL');
      }
    },
    40_000,
  );

  it('the production defaults hold together', () => {
    // Node refuses headersTimeout > requestTimeout; the admin listener is the smaller one; keep-alive outlives 60 s clients.
    expect(PROXY_HEADERS_TIMEOUT_MS).toBeLessThan(PROXY_REQUEST_TIMEOUT_MS);
    expect(PROXY_KEEP_ALIVE_TIMEOUT_MS).toBe(65_000);
    expect(ADMIN_MAX_CONNECTIONS).toBeLessThan(PROXY_MAX_CONNECTIONS);
    expect(TIMEOUT_CHECK_INTERVAL_MS).toBeLessThanOrEqual(ADMIN_HEADERS_TIMEOUT_MS / 2);
  });
});

describe('requestTimeout: a body that trickles in is cut', () => {
  it('408 and closed at requestTimeout; nothing reaches the vendor', async () => {
    const { proxyPort, vendor } = await stack({ limits: { proxy: FAST } });
    const conn = await connectRaw(proxyPort);
    const startMs = performance.now();
    await conn.write('POST /pix/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n');
    void drip(conn, 'x'.repeat(1_000), 50, stopper());
    const answer = parseAnswer(await conn.until(answered, 4_000, 'an answer to a trickling body'));
    const { atMs } = await conn.closed;
    expect(answer?.status).toBe(408);
    expect(atMs - startMs).toBeGreaterThanOrEqual(FAST.requestTimeoutMs - 50);
    expect(atMs - startMs).toBeLessThan(FAST.requestTimeoutMs + FAST.timeoutCheckIntervalMs + 700);
    expect(vendor.count).toBe(0);
  });
});

describe('keepAliveTimeout: an idle connection is closed', () => {
  it('after keepAliveTimeout (+ Node’s 1 s margin), announced in Keep-Alive', async () => {
    const { proxyPort } = await stack({ limits: { proxy: FAST } });
    const conn = await connectRaw(proxyPort);
    await conn.write('GET /pix/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const answer = parseAnswer(await conn.until(answered, 5_000, 'the answer'));
    const answeredAtMs = performance.now();
    expect(answer?.status).toBe(200);
    expect(answer?.headers['keep-alive']).toBe(`timeout=${FAST.keepAliveTimeoutMs / 1000}`);
    const { atMs, error } = await conn.closed;
    expect(error).toBeUndefined();
    expect(atMs - answeredAtMs).toBeGreaterThanOrEqual(FAST.keepAliveTimeoutMs - 50);
    expect(atMs - answeredAtMs).toBeLessThan(FAST.keepAliveTimeoutMs + 1_000 + 1_000);
  });
});

describe('maxConnections', () => {
  /** `n` connections that each completed a request and stay open (keep-alive). */
  async function holdOpen(port: number, n: number, path: string): Promise<RawConn[]> {
    const conns: RawConn[] = [];
    for (let i = 0; i < n; i++) {
      const conn = await connectRaw(port);
      await conn.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      expect(parseAnswer(await conn.until(answered, 5_000, 'the answer'))?.status).toBe(200);
      conns.push(conn);
    }
    return conns;
  }

  /** A connection past the cap: the TCP connect succeeds, then it is closed before any byte is answered. */
  async function expectRefused(port: number): Promise<void> {
    const conn = await connectRaw(port);
    await conn.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n').catch(() => undefined);
    const closed = await Promise.race([conn.closed, sleep(2_000).then(() => undefined)]);
    expect(closed, 'the connection past the cap was kept open').toBeDefined();
    expect(conn.received()).toBe('');
  }

  it('set in routes.yaml (limits.app, limits.admin), on the shipped program', async () => {
    const sc = await startShipped('limits:\n  app: { headersTimeout: 1s }\n  admin: { maxConnections: 2 }\n');
    try {
      const { status, closedAfterMs } = await slowloris(Number(new URL(sc.proxyUrl).port), 1_000 + TIMEOUT_CHECK_INTERVAL_MS + 1_500);
      expect(status).toBe(408);
      // Far below the 10 s default: the configured 1 s (+ the 1 s check interval).
      expect(closedAfterMs).toBeGreaterThanOrEqual(900);
      expect(closedAfterMs).toBeLessThan(PROXY_HEADERS_TIMEOUT_MS);
      const adminPort = Number(new URL(sc.adminUrl).port);
      const held = await holdOpen(adminPort, 2, '/healthz');
      await expectRefused(adminPort);
      for (const c of held) c.socket.destroy();
    } finally {
      await sc.kill('SIGKILL');
    }
  }, 30_000);

  for (const listener of ['proxy', 'admin'] as const) {
    it(`${listener}: connections past the cap are closed at once, without an answer; one slot freed is one served`, async () => {
      const cap = listener === 'proxy' ? 3 : 2;
      const s = await stack({ limits: { [listener]: { maxConnections: cap } } });
      const port = listener === 'proxy' ? s.proxyPort : s.adminPort;
      const path = listener === 'proxy' ? '/pix/held' : '/healthz';
      const held = await holdOpen(port, cap, path);
      await expectRefused(port);
      await expectRefused(port);
      // Told once (then at most once per DROPPED_LOG_INTERVAL_MS), not once per refused connection.
      const name = listener === 'proxy' ? 'listen' : 'admin';
      expect(s.lines.filter((l) => l.includes('"event":"connections.dropped"') && l.includes(`"listener":"${name}"`))).toHaveLength(1);
      held[0]?.socket.destroy();
      await held[0]?.closed;
      await sleep(50);
      const [again] = await holdOpen(port, 1, path);
      for (const c of [...held, again]) c?.socket.destroy();
    });
  }
});

describe('a refused CONNECT whose client never closes', () => {
  it('is closed by the sidecar after LAST_ANSWER_LINGER_MS, and does not hold up a drain', async () => {
    const s = await stack();
    // allowHalfOpen: this client neither closes its side nor resets, after it read the 405.
    const conn = await connectRaw(s.proxyPort, { allowHalfOpen: true });
    await conn.write('CONNECT api.vendor.example:443 HTTP/1.1\r\nHost: api.vendor.example:443\r\n\r\n');
    expect(parseAnswer(await conn.until(answered, 5_000, 'the 405'))?.status).toBe(405);
    const answeredAtMs = performance.now();
    // server.close() ends only when no socket of the listener is left: a drain that ends is a socket that closed.
    const stoppedAtMs = await Promise.race([s.sidecar.stop(200).then(() => performance.now()), sleep(LAST_ANSWER_LINGER_MS + 3_000).then(() => undefined)]);
    expect(stoppedAtMs, 'stop() did not finish: the CONNECT socket held the listener open').toBeDefined();
    expect((stoppedAtMs ?? Infinity) - answeredAtMs).toBeLessThan(LAST_ANSWER_LINGER_MS + 1_000);
    // The sidecar's end is gone: the half-open client's next byte is answered with a reset (seen on the write after).
    await conn.write('x').catch(() => undefined);
    await sleep(100);
    await conn.write('y').catch(() => undefined);
    const closed = await Promise.race([conn.closed, sleep(2_000).then(() => undefined)]);
    expect(closed, 'the sidecar kept the half-open CONNECT socket').toBeDefined();
    expect(closed?.error).toMatch(/ECONNRESET|EPIPE/);
  });
});
