// A vendor API stand-in that echoes what reached it, so the demo and the tests can see exactly
// what the proxy forwarded (injected Authorization, body bytes, headers).
import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { listenLocal, readBody, sendJson, sleep, type TlsFiles } from './local-server.js';

export interface VendorRequest {
  method: string;
  /** The request target exactly as received (raw req.url, query included). */
  target: string;
  rawHeaders: string[];
  headers: IncomingHttpHeaders;
  body: Buffer;
  authorization?: string;
}

export interface EchoVendor {
  /** e.g. http://127.0.0.1:PORT (no trailing slash) */
  readonly url: string;
  readonly port: number;
  readonly count: number;
  readonly requests: VendorRequest[];
  /** When set, only `Bearer <t>` with acceptToken(t) === true gets through; others get 401. */
  acceptToken: ((token: string) => boolean) | undefined;
  /** The next n requests get 401 invalid_token whatever their Authorization. */
  unauthorizedNext(n: number): void;
  close(): Promise<void>;
}

/** The deterministic body of `__bytes/N` (period 251, a prime, so it never aligns with buffer sizes). */
export function vendorBytes(n: number): Buffer {
  const buf = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) buf[i] = i % 251;
  return buf;
}

export async function startEchoVendor(
  opts: { tls?: TlsFiles; acceptToken?: (token: string) => boolean } = {},
): Promise<EchoVendor> {
  const requests: VendorRequest[] = [];
  let rejectNext = 0;

  const handle = async (req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<void> => {
    const body = await readBody(req);
    const target = req.url ?? '';
    const method = req.method ?? '';
    const authorization = req.headers.authorization;
    requests.push({ method, target, rawHeaders: req.rawHeaders, headers: req.headers, body, authorization });

    res.setHeader('x-vendor', 'echo');
    if (req.headers['x-test-hop'] === '1') {
      // Hop-by-hop trap: a correct proxy strips both x-hop and Connection from the response.
      res.setHeader('connection', 'keep-alive, x-hop');
      res.setHeader('x-hop', 'should-be-stripped');
    }

    const bearer = /^bearer (\S+)$/i.exec(authorization ?? '')?.[1];
    const accept = vendor.acceptToken;
    if (rejectNext > 0 || (accept && !(bearer !== undefined && accept(bearer)))) {
      rejectNext = Math.max(0, rejectNext - 1);
      sendJson(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
      return;
    }

    const path = target.split('?')[0] ?? '';
    const echo = {
      method,
      path: target,
      authorization: authorization ?? null,
      bodyBytes: body.length,
      bodySha256: createHash('sha256').update(body).digest('hex'),
    };
    let m: RegExpExecArray | null;
    if ((m = /\/__bytes\/(\d+)/.exec(path))) {
      const bytes = vendorBytes(Number(m[1]));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length });
      res.end(bytes);
    } else if (/\/__redirect(?:\/|$)/.test(path)) {
      const origin = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${req.socket.localPort}`;
      res.writeHead(302, { location: `${origin}/elsewhere`, 'content-length': 0 });
      res.end();
    } else if ((m = /\/__slow\/(\d+)/.exec(path))) {
      await sleep(Number(m[1]), signal);
      sendJson(res, 200, echo);
    } else if (/\/__chunked(?:\/|$)/.test(path)) {
      res.writeHead(200, { 'content-type': 'text/plain' }); // no content-length: chunked encoding
      for (let i = 0; i < 3; i++) {
        if (i > 0) await sleep(50, signal);
        res.write(`chunk-${i}\n`);
      }
      res.end();
    } else if ((m = /\/__status\/([2-5]\d\d)(?!\d)/.exec(path))) {
      sendJson(res, Number(m[1]), echo);
    } else {
      sendJson(res, 200, echo);
    }
  };

  const server = await listenLocal(handle, opts.tls);
  const vendor: EchoVendor = {
    url: server.origin,
    port: server.port,
    get count() {
      return requests.length;
    },
    requests,
    acceptToken: opts.acceptToken,
    unauthorizedNext: (n) => {
      rejectNext = n;
    },
    close: () => server.close(),
  };
  return vendor;
}
