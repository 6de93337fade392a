/** The one place a SidecarError becomes an HTTP answer: RFC 9457 problem+json plus `x-token-sidecar-error`. */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { SidecarError } from '../errors.js';

export function problemBody(err: SidecarError): string {
  return JSON.stringify({
    type: `urn:token-sidecar:error:${err.code}`,
    title: err.title,
    status: err.status,
    detail: err.message,
    code: err.code,
    ...(err.route === undefined ? {} : { route: err.route }),
  });
}

function problemHeaders(err: SidecarError, body: string): Record<string, string | number> {
  const headers: Record<string, string | number> = {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-token-sidecar-error': err.code,
  };
  if (err.retryAfterS !== undefined) headers['retry-after'] = Math.max(1, err.retryAfterS);
  if (err.code === 'TUNNEL_NOT_SUPPORTED') headers['allow'] = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';
  return headers;
}

/** Answer with the error; if the answer already started, the only honest signal left is to cut the connection. */
export function sendError(res: ServerResponse, err: SidecarError): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const body = problemBody(err);
  res.writeHead(err.status, problemHeaders(err, body));
  res.end(body);
}

/** Same answer on a raw socket (CONNECT requests never get a ServerResponse). */
export function sendErrorOnSocket(socket: Duplex, err: SidecarError): void {
  const body = problemBody(err);
  const head = Object.entries({ ...problemHeaders(err, body), connection: 'close' })
    .map(([k, v]) => `${k}: ${v}`)
    .join('\r\n');
  socket.end(`HTTP/1.1 ${err.status} ${err.title}\r\n${head}\r\n\r\n${body}`);
}
