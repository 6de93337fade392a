/**
 * Request framing a smuggler would try: a request must reach the vendor as exactly one request, or not at all.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { connectRaw } from './raw.js';
import { startStack, type Stack } from './stack.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
  // Warm the token, so the requests below go straight out.
  const c = await connectRaw(stack.proxyPort);
  await c.write(`GET /pix/warm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  await c.until((r) => r.includes('\r\n\r\n'));
});
afterAll(async () => {
  await stack.close();
});

it('Content-Length and Transfer-Encoding together (CL.TE): refused with 400, nothing reaches the vendor', async () => {
  const before = stack.vendor.count;
  const c = await connectRaw(stack.proxyPort);
  await c.write('POST /pix/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /pix/smuggled HTTP/1.1\r\nHost: x\r\n\r\n');
  const answer = await c.until((r) => r.includes('\r\n\r\n'));
  expect(answer).toMatch(/^HTTP\/1\.1 400 /);
  await c.closed;
  expect(stack.vendor.count).toBe(before);
});

it('two Content-Length headers that disagree: refused with 400, nothing reaches the vendor', async () => {
  const before = stack.vendor.count;
  const c = await connectRaw(stack.proxyPort);
  await c.write('POST /pix/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 30\r\n\r\nxGET /pix/smuggled HTTP/1.1\r\n\r\n');
  expect(await c.until((r) => r.includes('\r\n\r\n'))).toMatch(/^HTTP\/1\.1 400 /);
  expect(stack.vendor.count).toBe(before);
});

it('pipelined requests are answered in order, each forwarded once', async () => {
  const before = stack.vendor.count;
  const c = await connectRaw(stack.proxyPort);
  await c.write(['1', '2', '3'].map((n) => `GET /pix/p${n} HTTP/1.1\r\nHost: x\r\n\r\n`).join(''));
  const answers = await c.until((r) => (r.match(/HTTP\/1\.1 200 /g) ?? []).length === 3, 5_000, 'three answers');
  c.reset();
  expect(stack.vendor.count - before).toBe(3);
  const targets = stack.vendor.requests.slice(-3).map((r) => r.target);
  expect(targets).toEqual(['/v2/p1', '/v2/p2', '/v2/p3']);
  expect(answers.indexOf('/v2/p1')).toBeLessThan(answers.indexOf('/v2/p2'));
  expect(answers.indexOf('/v2/p2')).toBeLessThan(answers.indexOf('/v2/p3'));
});

it('a chunked body with an invalid chunk size: refused, the vendor gets no request it could take as two', async () => {
  const before = stack.vendor.requests.length;
  const c = await connectRaw(stack.proxyPort);
  await c.write('POST /pix/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /pix/smuggled HTTP/1.1\r\n\r\n');
  await c.closed;
  expect(stack.vendor.requests.slice(before).map((r) => r.target)).not.toContain('/v2/smuggled');
});
