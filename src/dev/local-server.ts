// Shared plumbing for the dev/test stand-in servers (fake IdP, echo vendor): loopback-only,
// ephemeral port, optional TLS, and a close() that never waits on a client or a pending timer.
import http from 'node:http';
import https from 'node:https';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

export interface TlsFiles {
  cert: string;
  key: string;
}

export interface LocalServer {
  /** `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (no trailing slash). */
  origin: string;
  port: number;
  close(): Promise<void>;
}

/** `signal` is aborted by close(); pass it to sleep() so delayed handlers end at once. */
type Handler = (req: IncomingMessage, res: ServerResponse, signal: AbortSignal) => Promise<void>;

export async function listenLocal(handler: Handler, tls?: TlsFiles): Promise<LocalServer> {
  const aborter = new AbortController();
  const sockets = new Set<Socket>();
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    // A handler failure (aborted sleep, client gone) must not crash the test process.
    handler(req, res, aborter.signal).catch(() => res.destroy());
  };
  const server = tls ? https.createServer({ cert: tls.cert, key: tls.key }, onRequest) : http.createServer(onRequest);
  // 'connection' carries the raw TCP socket for both http and https; destroying it also ends TLS.
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('server has no TCP address');
  let closing: Promise<void> | undefined;
  return {
    origin: `${tls ? 'https' : 'http'}://127.0.0.1:${address.port}`,
    port: address.port,
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        aborter.abort();
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      })),
  };
}

/** Sleeps ms; rejects (ending the handler) when the server closes. */
export async function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms > 0) await delay(ms, undefined, { signal });
}

export async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: OutgoingHttpHeaders = {}): void {
  const payload = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': payload.length });
  res.end(payload);
}
