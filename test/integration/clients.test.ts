/**
 * Real clients with their defaults against the sidecar (docs/clients.md): Java's HttpClient (HTTP_2 by default, so
 * `Upgrade: h2c` on http), curl's `--http2` (the same upgrade) and h2c with prior knowledge (Node's http2, curl).
 */
import { execFile, execFileSync } from 'node:child_process';
import http2 from 'node:http2';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLIENT_ID, SECRET, startStack, type Stack } from '../security/stack.js';

const run = promisify(execFile);
const JAVA_CLIENT = path.join(import.meta.dirname, '..', 'fixtures', 'JavaClient.java');
const hasJava = (() => {
  try {
    execFileSync('java', ['-version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

describe('clients with their defaults', () => {
  let stack: Stack;
  const last = () => stack.vendor.requests.at(-1);

  beforeAll(async () => {
    stack = await startStack({
      extraRoutes: (vendorUrl, idpUrl) => [
        { name: 'by-host', match: { host: 'api.vendor.test' }, upstream: `${vendorUrl}/v3`, auth: { type: 'oauth2', tokenUrl: idpUrl, clientId: CLIENT_ID, clientSecret: SECRET } },
      ],
    });
  });
  afterAll(() => stack?.close());

  const expectServedWithoutUpgrade = (target: string) => {
    expect(last()?.target).toBe(target);
    expect(last()?.authorization).toBe(`Bearer ${stack.idp.lastToken()}`);
    // The declined upgrade's headers are hop-by-hop: the vendor sees none of them.
    expect(last()?.headers['upgrade']).toBeUndefined();
    expect(last()?.headers['http2-settings']).toBeUndefined();
  };

  it.skipIf(!hasJava)("Java's HttpClient (Upgrade: h2c): base URL and proxy, answered in HTTP/1.1", async () => {
    const base = await run('java', [JAVA_CLIENT, `${stack.sidecar.proxyUrl}/pix/java?q=1`], { timeout: 30_000 });
    expect(base.stdout.split('\n')[0]).toBe('200 HTTP_1_1');
    expectServedWithoutUpgrade('/v2/java?q=1');
    const proxied = await run('java', [JAVA_CLIENT, 'http://api.vendor.test/java', String(stack.proxyPort)], { timeout: 30_000 });
    expect(proxied.stdout.split('\n')[0]).toBe('200 HTTP_1_1');
    expectServedWithoutUpgrade('/v3/java');
  }, 60_000);

  it('curl --http2 on http (Upgrade: h2c) is answered in HTTP/1.1', async () => {
    const { stdout } = await run('curl', ['-sS', '--http2', '-o', '/dev/null', '-w', '%{http_code} %{http_version}', `${stack.sidecar.proxyUrl}/pix/curl-h2`]);
    expect(stdout).toBe('200 1.1');
    expectServedWithoutUpgrade('/v2/curl-h2');
  });

  it('h2c with prior knowledge gets GOAWAY HTTP_1_1_REQUIRED with the reason (Node http2, curl)', async () => {
    const goaway = await new Promise<{ code: number; reason: string }>((resolve, reject) => {
      const session = http2.connect(stack.sidecar.proxyUrl);
      session.on('goaway', (code, _last, data) => resolve({ code, reason: data?.toString('latin1') ?? '' }));
      session.on('error', () => undefined);
      const req = session.request({ ':path': '/pix/x' });
      req.on('error', () => undefined);
      req.end();
      setTimeout(() => reject(new Error('no GOAWAY in 5 s')), 5_000).unref();
    });
    expect(goaway.code).toBe(http2.constants.NGHTTP2_HTTP_1_1_REQUIRED);
    expect(goaway.reason).toContain('HTTP/1.1');
    const curl = await run('curl', ['-sS', '--http2-prior-knowledge', `${stack.sidecar.proxyUrl}/pix/x`]).catch((e: { code: number; stderr: string }) => e);
    expect('code' in curl ? curl.code : 0).toBe(16); // curl: "Error in the HTTP2 framing layer"
    // Nothing reached the vendor, and the sidecar serves on.
    expect(last()?.target).not.toBe('/v2/x');
    expect((await fetch(`${stack.sidecar.proxyUrl}/pix/after`)).status).toBe(200);
  });
});
