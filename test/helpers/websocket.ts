/**
 * WebSocket and streaming test plumbing: a real `ws` vendor that checks the token on each handshake, `ws` clients, an
 * in-process sidecar from routes, and the echo measurement used to choose the upgrade implementation.
 */
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { stringify } from 'yaml';
import { loadConfigText } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { Sidecar, type SidecarOptions } from '../../src/sidecar.js';

export type Json = Record<string, unknown>;

/** What the vendor does with the next handshake (default: check the token, accept). */
export type HandshakeScript = { kind: 'status'; status: number; body: string } | { kind: 'reset' } | { kind: 'hang' };

export interface WsVendor {
  url: string;
  /** `Authorization` of every handshake, in order (accepted or not). */
  handshakes: { authorization: string | undefined; dpop: string | undefined; path: string; status: number }[];
  /** The raw socket of every accepted websocket, in order (to reset one mid-stream). */
  upgraded: Socket[];
  /** Open server-side sockets (`ws`'s own set). */
  clients: Set<WebSocket>;
  /** TCP connections to the vendor now. */
  connections(): Promise<number>;
  /** Token check on each handshake; a refused one gets 401. Default: any Bearer. */
  acceptToken: (token: string) => boolean;
  enqueue(...s: HandshakeScript[]): void;
  close(): Promise<void>;
}

/** Echoes every message; closes with code 4000+ when sent `close:CODE`. Plain HTTP requests get 200 `{ ok, path }`. */
export async function startWsVendor(): Promise<WsVendor> {
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
  const sockets = new Set<Socket>();
  const queue: HandshakeScript[] = [];
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, path: req.url, authorization: req.headers.authorization ?? null }));
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const vendor: WsVendor = {
    url: '',
    handshakes: [],
    upgraded: [],
    clients: wss.clients,
    connections: () => new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n)))),
    acceptToken: () => true,
    enqueue: (...s) => void queue.push(...s),
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        for (const s of sockets) s.destroy();
        wss.close();
        server.close(() => resolve());
      }),
  };
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    const authorization = req.headers.authorization;
    const dpop = typeof req.headers.dpop === 'string' ? req.headers.dpop : undefined;
    const record = (status: number) => vendor.handshakes.push({ authorization, dpop, path: req.url ?? '', status });
    const script = queue.shift();
    if (script?.kind === 'reset') {
      record(0);
      (socket as Socket).resetAndDestroy();
      return;
    }
    if (script?.kind === 'hang') {
      // Never answers, but closes when the sidecar gives up (Node's server leaves a half-closed upgrade open).
      socket.once('end', () => socket.destroy());
      return record(0);
    }
    const token = /^(?:Bearer|DPoP) (\S+)$/.exec(authorization ?? '')?.[1];
    const refused = script?.kind === 'status' ? script : token === undefined || !vendor.acceptToken(token) ? { status: 401, body: '{"error":"invalid_token"}' } : undefined;
    if (refused) {
      record(refused.status);
      const extra = refused.status === 401 ? 'WWW-Authenticate: Bearer error="invalid_token"\r\n' : '';
      socket.end(`HTTP/1.1 ${refused.status} ${http.STATUS_CODES[refused.status] ?? ''}\r\n${extra}Content-Type: application/json\r\nX-Vendor: yes\r\nContent-Length: ${Buffer.byteLength(refused.body)}\r\n\r\n${refused.body}`);
      return;
    }
    record(101);
    vendor.upgraded.push(socket as Socket);
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('message', (data: RawData, isBinary: boolean) => {
        const text = isBinary ? '' : data.toString();
        if (text.startsWith('close:')) ws.close(Number(text.slice(6)), 'vendor says bye');
        else ws.send(data, { binary: isBinary });
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  vendor.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return vendor;
}

/** A refused handshake as the client saw it. */
export class Refused extends Error {
  constructor(
    readonly status: number,
    readonly headers: http.IncomingHttpHeaders,
    readonly body: string,
  ) {
    super(`handshake refused: ${status}`);
  }
}

/** Open a `ws` client; rejects with `Refused` (status, headers, body) when the answer is not 101. */
export function openWs(url: string, headers?: Record<string, string>): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024, ...(headers ? { headers } : {}) });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => reject(new Refused(res.statusCode ?? 0, res.headers, Buffer.concat(chunks).toString('utf8'))));
    });
  });
}

/** Send `data`, resolve with the next message. */
export function echo(ws: WebSocket, data: string | Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    if (ws.readyState !== WebSocket.OPEN) return reject(new Error(`socket not open (readyState ${ws.readyState})`));
    const onClose = () => reject(new Error('closed before the echo'));
    ws.once('close', onClose);
    ws.once('message', (m: RawData) => {
      ws.off('close', onClose);
      resolve(Array.isArray(m) ? Buffer.concat(m) : Buffer.from(m as Buffer));
    });
    ws.send(data);
  });
}

export function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  if (ws.readyState === WebSocket.CLOSED) return Promise.resolve({ code: -1, reason: 'already closed' });
  return new Promise((resolve) => ws.once('close', (code: number, reason: Buffer) => resolve({ code, reason: reason.toString() })));
}

export interface InProcessSidecar {
  sidecar: Sidecar;
  base: string;
  port: number;
  lines: string[];
  /** TCP connections to the app listener now (upgraded ones included: Node still counts them). */
  connections(): Promise<number>;
  stop(): Promise<void>;
}

/** A sidecar on port 0 from routes, through the real config loader, logging into `lines`. */
export async function startSidecarWith(routes: Json[], limits?: SidecarOptions['limits']): Promise<InProcessSidecar> {
  const loaded = await loadConfigText(stringify({ version: 1, listen: '127.0.0.1:0', admin: '127.0.0.1:0', drainTimeout: '1s', routes }));
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', destination: { write: (line: string) => void lines.push(line) } });
  const sidecar = await Sidecar.start({ config: loaded.config, log, ...(limits ? { limits } : {}) });
  // Read-only: the listener is private to Sidecar; its connection count is what "no leaked socket" means here.
  const server = sidecar['proxyServer'];
  return {
    sidecar,
    base: sidecar.proxyUrl,
    port: Number(new URL(sidecar.proxyUrl).port),
    lines,
    connections: () => new Promise((resolve, reject) => server.getConnections((err, n) => (err ? reject(err) : resolve(n)))),
    stop: () => sidecar.stop(200),
  };
}

/** Parsed JSON log lines with `event` (or `msg`) equal to `what`. */
export function logged(lines: readonly string[], what: string): Json[] {
  return lines.map((l) => JSON.parse(l) as Json).filter((l) => l['event'] === what || l['msg'] === what);
}

export interface EchoFigures {
  handshakeP50Ms: number;
  handshakeMaxMs: number;
  roundTripsPerS: number;
}

/** `sockets` concurrent handshakes to `url`, then 64-byte echo round trips on all of them for `durationMs`. */
export async function measureEcho(url: string, sockets: number, durationMs: number, headers?: Record<string, string>): Promise<EchoFigures> {
  const opened = await Promise.all(
    Array.from({ length: sockets }, async () => {
      const t0 = performance.now();
      const ws = await openWs(url, headers);
      return { ws, ms: performance.now() - t0 };
    }),
  );
  const ms = opened.map((o) => o.ms).sort((a, b) => a - b);
  const payload = Buffer.alloc(64, 1);
  let trips = 0;
  const endAt = performance.now() + durationMs;
  await Promise.all(
    opened.map(
      ({ ws }) =>
        new Promise<void>((resolve) => {
          ws.on('message', () => {
            trips++;
            if (performance.now() < endAt) ws.send(payload);
            else resolve();
          });
          ws.send(payload);
        }),
    ),
  );
  await Promise.all(opened.map(({ ws }) => (ws.close(), closed(ws))));
  return { handshakeP50Ms: ms[Math.floor(ms.length / 2)] ?? 0, handshakeMaxMs: ms.at(-1) ?? 0, roundTripsPerS: Math.round(trips / (durationMs / 1000)) };
}

/**
 * An opening handshake over a bare TCP socket (RFC 6455 §4.1), for what a `ws` client cannot do: reset at a chosen
 * moment, send other upgrades. Resolves with the socket and the answer's head once it arrived (or the socket closed).
 */
export function rawExchange(port: number, request: string, opts: { until?: string } = {}): Promise<{ socket: Socket; text: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    const until = opts.until ?? '\r\n\r\n';
    socket.on('error', reject);
    socket.on('connect', () => socket.write(request));
    const onData = (d: Buffer) => {
      text += d.toString('latin1');
      if (text.includes(until)) {
        socket.off('data', onData);
        resolve({ socket, text });
      }
    };
    socket.on('data', onData);
    socket.on('close', () => resolve({ socket, text }));
  });
}

export function handshakeRequest(port: number, path: string, extra = ''): string {
  return `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${extra}\r\n`;
}
