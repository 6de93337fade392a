/**
 * How apps that use a proxy environment reach the sidecar: the common Node agents tunnel even plain-http targets
 * (`CONNECT api.vendor.test:80`), others send absolute-form. Both are served like a base-URL request when a host route
 * serves the host; every other CONNECT is the typed 405.
 */
import { execFile } from 'node:child_process';
import http from 'node:http';
import { promisify } from 'node:util';
import { HttpProxyAgent as HpHttpProxyAgent } from 'hpagent';
import { HttpProxyAgent } from 'http-proxy-agent';
import { EnvHttpProxyAgent, fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectRaw } from '../security/raw.js';
import { CLIENT_ID, SECRET, startStack, type Stack } from '../security/stack.js';

const run = promisify(execFile);
const HOST = 'api.vendor.test';

function get(url: string, agent: http.Agent): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

describe('proxy environments: CONNECT to a host route on plain http, and absolute-form', () => {
  let stack: Stack;
  let proxy: string;
  const lastAtVendor = () => stack.vendor.requests.at(-1);

  beforeAll(async () => {
    stack = await startStack({
      extraRoutes: (vendorUrl, idpUrl) => [
        {
          name: 'vendor-host',
          match: { host: HOST, pathPrefix: '/api' },
          upstream: `${vendorUrl}/v9`,
          auth: { type: 'oauth2', tokenUrl: idpUrl, clientId: CLIENT_ID, clientSecret: SECRET },
        },
      ],
    });
    proxy = stack.sidecar.proxyUrl;
  });
  afterAll(() => stack?.close());

  const expectServed = (target: string) => {
    expect(lastAtVendor()?.target).toBe(target);
    expect(lastAtVendor()?.authorization).toBe(`Bearer ${stack.idp.lastToken()}`);
  };

  it("undici's EnvHttpProxyAgent (CONNECT :80, then HTTP inside)", async () => {
    const dispatcher = new EnvHttpProxyAgent({ httpProxy: proxy, noProxy: '' });
    try {
      const res = await undiciFetch(`http://${HOST}/api/items?x=1`, { dispatcher });
      expect(res.status).toBe(200);
      expectServed('/v9/items?x=1');
      // Keep-alive inside the tunnel: a second request on it.
      const again = await undiciFetch(`http://${HOST}/api/again`, { dispatcher, method: 'POST', body: 'a=1' });
      expect(again.status).toBe(200);
      expectServed('/v9/again');
      expect(lastAtVendor()?.body.toString()).toBe('a=1');
    } finally {
      await dispatcher.close();
    }
  });

  it('hpagent (CONNECT) and http-proxy-agent (absolute-form)', async () => {
    const hp = new HpHttpProxyAgent({ proxy, keepAlive: false });
    expect((await get(`http://${HOST}/api/hp`, hp)).status).toBe(200);
    expectServed('/v9/hp');
    const hpa = new HttpProxyAgent(proxy);
    expect((await get(`http://${HOST}/api/hpa`, hpa)).status).toBe(200);
    expectServed('/v9/hpa');
  });

  it('curl -x (absolute-form) and curl -p -x (a tunnel)', async () => {
    for (const [flags, path] of [[[], 'plain'], [['-p'], 'tunnel']] as const) {
      const { stdout } = await run('curl', ['-sS', ...flags, '-x', proxy, '-o', '/dev/null', '-w', '%{http_code}', `http://${HOST}/api/curl-${path}`]);
      expect(stdout).toBe('200');
      expectServed(`/v9/curl-${path}`);
    }
  });

  it('inside a tunnel the route rules and errors are those of a proxied request', async () => {
    const dispatcher = new EnvHttpProxyAgent({ httpProxy: proxy, noProxy: '' });
    try {
      const res = await undiciFetch(`http://${HOST}/elsewhere`, { dispatcher });
      expect(res.status).toBe(404);
      expect(res.headers.get('content-type')).toContain('application/problem+json');
      expect(((await res.json()) as { code: string }).code).toBe('ROUTE_NOT_FOUND');
    } finally {
      await dispatcher.close();
    }
  });

  it('a request in the tunnel is served for the tunnel host only, whatever its Host header says', async () => {
    const conn = await connectRaw(stack.proxyPort);
    await conn.write(`CONNECT ${HOST}:80 HTTP/1.1\r\nHost: ${HOST}:80\r\n\r\n`);
    await conn.until((r) => r.includes('\r\n\r\n'), 5_000, 'the tunnel answer');
    expect(conn.received()).toMatch(/^HTTP\/1\.1 200 /);
    // `/pix` is a path-only route for any host; inside a tunnel to HOST it must not be reachable.
    await conn.write('GET /pix/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    const answer = await conn.until((r) => r.includes('ROUTE_NOT_FOUND'), 5_000, 'a 404 inside the tunnel');
    expect(answer).toContain('HTTP/1.1 404');
    expect(answer).toContain(`no route for host ${HOST}`);
  });

  it('a request sent in the same packet as the CONNECT (no wait for the 200) is served', async () => {
    const conn = await connectRaw(stack.proxyPort);
    await conn.write(`CONNECT ${HOST}:80 HTTP/1.1\r\nHost: ${HOST}:80\r\n\r\nGET /api/eager HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
    const answer = await conn.until((r) => /\r\n\r\n[\s\S]*HTTP\/1\.1 200 [\s\S]*\r\n\r\n/.test(r), 5_000, 'the tunnel and the request answered');
    expect(answer).toMatch(/^HTTP\/1\.1 200 Connection Established/);
    await conn.closed;
    expectServed('/v9/eager');
  });

  it('every other CONNECT is refused with the typed 405, a TLS port with the http:// hint', async () => {
    for (const [target, hint] of [
      ['other.vendor.test:80', 'CONNECT is not supported'],
      [`${HOST}:443`, `call http://${HOST}/`],
      ['not an authority', 'CONNECT is not supported'],
    ] as const) {
      const conn = await connectRaw(stack.proxyPort);
      await conn.write(`CONNECT ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
      const answer = await conn.until((r) => r.includes('}'), 5_000, `an answer to CONNECT ${target}`);
      expect(answer).toMatch(/^HTTP\/1\.1 (405|400) /);
      if (answer.startsWith('HTTP/1.1 405')) {
        expect(answer).toContain('TUNNEL_NOT_SUPPORTED');
        expect(answer).toContain(hint);
      }
      conn.reset();
    }
  });

  it('TLS inside a tunnel to a plain-http port is cut and said in the log; the sidecar stays up', async () => {
    const conn = await connectRaw(stack.proxyPort);
    await conn.write(`CONNECT ${HOST}:8080 HTTP/1.1\r\nHost: ${HOST}:8080\r\n\r\n`);
    await conn.until((r) => r.includes('\r\n\r\n'), 5_000, 'the tunnel answer');
    // A TLS ClientHello's first bytes: handshake record, TLS 1.0 record version.
    await conn.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]));
    await conn.closed;
    expect(stack.lines.some((l) => l.includes('"event":"tunnel.tls_refused"'))).toBe(true);
    expect((await fetch(`${proxy}/pix/alive`)).status).toBe(200);
  });
});
