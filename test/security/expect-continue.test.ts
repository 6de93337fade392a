/**
 * `Expect: 100-continue` (RFC 9110 §10.1.1): the client sends its headers and waits. The sidecar sends 100 Continue
 * only once it will read the body (route matched, request accepted, token in hand); anything it refuses is answered
 * with its problem+json at once, without 100, and the connection is closed, since the body was never read.
 */
import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { connectRaw, parseAnswer, type RawConn } from './raw.js';
import { startStack, type Stack } from './stack.js';

const BODY = 'b'.repeat(10_000);
const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

const stacks: Stack[] = [];
afterEach(async () => {
  await Promise.all(stacks.splice(0).map((s) => s.close()));
});
async function stack(opts: Parameters<typeof startStack>[0] = {}): Promise<Stack> {
  const s = await startStack(opts);
  stacks.push(s);
  return s;
}

/** Send the head of a request that expects 100-continue; resolve with the first thing the sidecar answers. */
async function headOnly(port: number, head: string): Promise<{ conn: RawConn; first: string }> {
  const conn = await connectRaw(port);
  await conn.write(head);
  const first = await conn.until((t) => t.includes('\r\n\r\n'), 5_000, 'a first (interim or final) answer');
  return { conn, first };
}

const uploadHead = (path: string, extra = '') =>
  `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\nExpect: 100-continue\r\n${extra}\r\n`;

/** A refusal: the final answer comes first (no 100), typed, with `connection: close`, and the connection closes without the body being sent. */
async function expectRefusedWithoutContinue(port: number, head: string, code: string, status: number): Promise<void> {
  const { conn, first } = await headOnly(port, head);
  expect(first.startsWith('HTTP/1.1 100'), `answered 100 Continue before refusing:\n${first.slice(0, 200)}`).toBe(false);
  const answer = parseAnswer(await conn.until((t) => parseAnswer(t) !== undefined, 5_000, 'the final answer'));
  expect(answer?.status).toBe(status);
  expect(answer?.headers['content-type']).toBe('application/problem+json');
  expect(answer?.headers['x-token-sidecar-error']).toBe(code);
  expect(answer?.headers['connection']).toBe('close');
  expect(JSON.parse(answer?.body ?? '{}')).toMatchObject({ code, status });
  // The body was never read: the sidecar closes the connection instead of waiting for it.
  const closed = await Promise.race([conn.closed.then(() => 'closed'), new Promise((r) => setTimeout(() => r('still open'), 2_000))]);
  expect(closed).toBe('closed');
}

describe('Expect: 100-continue', () => {
  it('an unmatched path gets 404 ROUTE_NOT_FOUND at once, without 100 Continue', async () => {
    const { proxyPort, vendor } = await stack();
    await expectRefusedWithoutContinue(proxyPort, uploadHead('/nope/upload'), 'ROUTE_NOT_FOUND', 404);
    expect(vendor.count).toBe(0);
  });

  it('a refused request (a path leaving the base, two Host headers) gets 400 BAD_REQUEST without 100 Continue', async () => {
    const { proxyPort, vendor, idp } = await stack();
    await expectRefusedWithoutContinue(proxyPort, uploadHead('/pix/%2e%2e/admin'), 'BAD_REQUEST', 400);
    await expectRefusedWithoutContinue(proxyPort, uploadHead('/pix/upload', 'Host: evil.example\r\n'), 'BAD_REQUEST', 400);
    expect(vendor.count).toBe(0);
    expect(idp.calls).toBe(0);
  });

  it('a request whose token is refused gets 502 TOKEN_REJECTED without 100 Continue (no upload for nothing)', async () => {
    const { proxyPort, vendor, idp } = await stack({ secret: 'not-the-secret' });
    await expectRefusedWithoutContinue(proxyPort, uploadHead('/pix/upload'), 'TOKEN_REJECTED', 502);
    expect(idp.calls).toBe(1);
    expect(vendor.count).toBe(0);
  });

  it('a matched request gets 100 Continue, then its body is forwarded, and the connection is kept', async () => {
    const { proxyPort, vendor } = await stack();
    const { conn, first } = await headOnly(proxyPort, uploadHead('/pix/upload'));
    expect(first).toBe(CONTINUE);
    await conn.write(BODY);
    const answer = parseAnswer((await conn.until((t) => parseAnswer(t.slice(CONTINUE.length)) !== undefined, 5_000, 'the answer')).slice(CONTINUE.length));
    expect(answer?.status).toBe(200);
    expect(answer?.headers['connection']).not.toBe('close');
    expect(JSON.parse(answer?.body ?? '{}')).toMatchObject({ method: 'POST', path: '/v2/upload', bodyBytes: BODY.length, bodySha256: sha256(BODY) });
    // Expect is hop-by-hop: the vendor gets the body, not the expectation.
    expect(vendor.requests[0]?.headers['expect']).toBeUndefined();
    // The same connection serves the next request.
    const before = conn.received().length;
    await conn.write('GET /pix/next HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const next = parseAnswer((await conn.until((t) => parseAnswer(t.slice(before)) !== undefined, 5_000, 'the second answer')).slice(before));
    expect(next?.status).toBe(200);
    conn.socket.destroy();
  });

  it('a matched request with a streamed (chunked) body gets 100 Continue, then the body streams to the vendor', async () => {
    const { proxyPort, vendor } = await stack();
    const head = 'POST /pix/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n';
    const { conn, first } = await headOnly(proxyPort, head);
    expect(first).toBe(CONTINUE);
    await conn.write(`${BODY.length.toString(16)}\r\n${BODY}\r\n0\r\n\r\n`);
    const answer = parseAnswer((await conn.until((t) => parseAnswer(t.slice(CONTINUE.length)) !== undefined, 5_000, 'the answer')).slice(CONTINUE.length));
    expect(answer?.status).toBe(200);
    expect(JSON.parse(answer?.body ?? '{}')).toMatchObject({ bodyBytes: BODY.length, bodySha256: sha256(BODY) });
    expect(vendor.count).toBe(1);
    conn.socket.destroy();
  });
});
