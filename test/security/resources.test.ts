/**
 * Resources under abuse: one shipped sidecar process takes each abusive group in turn (hundreds of connections that
 * reset, lie or never finish), and its resident memory and open file descriptors are read from /proc before and after
 * each. Every group must leave the process serving, with its descriptors back near where they were (no socket, timer
 * or tunnel left behind) and its memory within a bound. The table is printed for the closing notes.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { startSidecarProcess, writeConfig, type SidecarProcess } from '../helpers/sidecar-process.js';
import { connectRaw, processAlive, type RawConn } from './raw.js';

const CLIENT_ID = 'resources-client';
const SECRET = 'resources-secret-5150';
const PER_GROUP = 300;
const AT_ONCE = 100;
/** A group may leave this many more descriptors open than before it (pool sockets to the vendor, the token endpoint). */
const FD_SLACK = 8;
/** Resident memory a group may add: V8 grows its heap under load and gives it back lazily, so this is a ceiling on a leak. */
const RSS_SLACK_MB = 40;

let idp: FakeIdp;
let vendor: EchoVendor;
let sc: SidecarProcess;
let port: number;
const agent = new Agent({ connections: 4 });

beforeAll(async () => {
  idp = await startFakeIdp({ clients: { [CLIENT_ID]: SECRET } });
  vendor = await startEchoVendor();
  const auth = `{ type: oauth2, tokenUrl: "${idp.url}", clientId: ${CLIENT_ID}, clientSecret: { fromEnv: RESOURCES_SECRET } }`;
  const file = await writeConfig(`version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
limits:
  app: { headersTimeout: 1s, requestTimeout: 2s, keepAliveTimeout: 1s }
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: ${vendor.url}/v2
    auth: ${auth}
  - name: by-host
    match: { host: api.vendor.test }
    upstream: ${vendor.url}/v3
    auth: ${auth}
`);
  sc = await startSidecarProcess(file, { RESOURCES_SECRET: SECRET });
  port = Number(new URL(sc.proxyUrl).port);
}, 30_000);

afterAll(async () => {
  await Promise.all([sc?.kill('SIGKILL'), idp?.close(), vendor?.close(), agent.close()]);
});

const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024;
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

async function served(): Promise<void> {
  const res = await request(`${sc.proxyUrl}/pix/ok`, { dispatcher: agent });
  await res.body.dump();
  expect(res.statusCode).toBe(200);
}

/**
 * `PER_GROUP` connections, `AT_ONCE` at a time; each is closed by the test (a reset) or by the sidecar. Answers how
 * many the test had to cut after 5 s because the sidecar had not closed them.
 */
async function abuse(act: (conn: RawConn) => Promise<void>): Promise<number> {
  let leftOpen = 0;
  for (let done = 0; done < PER_GROUP; done += AT_ONCE) {
    await Promise.all(
      Array.from({ length: AT_ONCE }, async () => {
        const conn = await connectRaw(port);
        await act(conn).catch(() => undefined);
        const closed = await Promise.race([conn.closed.then(() => true), sleep(5_000).then(() => false)]);
        if (!closed) {
          leftOpen++;
          conn.reset();
        }
      }),
    );
  }
  return leftOpen;
}

const GROUPS: [string, (conn: RawConn) => Promise<void>][] = [
  ['CONNECT to a TLS port, reset after the 405', async (c) => {
    await c.write('CONNECT api.vendor.example:443 HTTP/1.1\r\nHost: x\r\n\r\n');
    await c.until((r) => r.includes('\r\n\r\n'), 3_000);
    c.reset();
  }],
  ['tunnel accepted, then reset mid-request', async (c) => {
    await c.write('CONNECT api.vendor.test:80 HTTP/1.1\r\nHost: api.vendor.test:80\r\n\r\n');
    await c.until((r) => r.includes('200 Connection Established'), 3_000);
    await c.write('POST /x HTTP/1.1\r\nHost: api.vendor.test\r\nContent-Length: 100\r\n\r\nabc');
    c.reset();
  }],
  ['tunnel accepted, then silent (cut by the header timeout)', async (c) => {
    await c.write('CONNECT api.vendor.test:80 HTTP/1.1\r\nHost: api.vendor.test:80\r\n\r\n');
  }],
  ['malformed request line', async (c) => {
    await c.write('GET /pix/x HTTP/9.9 garbage\r\n\r\n');
  }],
  ['headers over the limit (431)', async (c) => {
    await c.write(`GET /pix/x HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
  }],
  ['body cut by a reset, request replayable', async (c) => {
    await c.write('POST /pix/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n' + 'b'.repeat(5_000));
    await sleep(5);
    c.reset();
  }],
  ['slowloris (headers never finish)', async (c) => {
    await c.write('GET /pix/x HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n');
  }],
  ['h2c with prior knowledge', async (c) => {
    await c.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
  }],
  ['Expect: 100-continue to no route', async (c) => {
    await c.write('POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
    await c.until((r) => r.includes('404'), 3_000);
  }],
];

it(`survives ${GROUPS.length} abusive groups of ${PER_GROUP} connections with descriptors and memory bounded`, async () => {
  await served();
  await sleep(300);
  const rows: string[] = [];
  for (const [name, act] of GROUPS) {
    const before = { rss: rssMb(sc.pid), fds: fds(sc.pid) };
    const leftOpen = await abuse(act);
    // Let the last closes land.
    for (let i = 0; i < 30 && fds(sc.pid) > before.fds + FD_SLACK; i++) await sleep(100);
    expect(processAlive(sc.pid), `died during "${name}"`).toBe(true);
    await served();
    const after = { rss: rssMb(sc.pid), fds: fds(sc.pid) };
    rows.push(`| ${name} | ${before.rss.toFixed(1)} → ${after.rss.toFixed(1)} | ${before.fds} → ${after.fds} |`);
    // Every connection ends: the ones the test does not reset are closed by the sidecar's limits, none left hanging.
    expect(leftOpen, `connections still open after 5 s in "${name}"`).toBe(0);
    expect(after.fds, `descriptors after "${name}"`).toBeLessThanOrEqual(before.fds + FD_SLACK);
    expect(after.rss - before.rss, `RSS growth in "${name}" (MB)`).toBeLessThan(RSS_SLACK_MB);
  }
  console.log(['| group (300 connections each) | RSS MB | open fds |', '| --- | --- | --- |', ...rows].join('\n'));
  expect(sc.lines.filter((l) => /Unhandled|uncaught/i.test(l))).toEqual([]);
}, 180_000);
