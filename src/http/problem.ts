/**
 * The one place a SidecarError becomes an HTTP answer, for the proxy, the admin API and the webhook: RFC 9457
 * problem+json, the status from the code table in core/errors.ts, and `x-token-sidecar-error: CODE`.
 */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { SidecarError } from '../core/errors.js';

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
  if (err.allow !== undefined) headers['allow'] = err.allow;
  return headers;
}

/**
 * Answer with the error; if the answer already started, the only honest signal left is to cut the connection.
 * `extraHeaders` go on the answer too (a request id, `connection: close`).
 */
export function sendError(res: ServerResponse, err: SidecarError, extraHeaders?: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const body = problemBody(err);
  res.writeHead(err.status, extraHeaders ? { ...problemHeaders(err, body), ...extraHeaders } : problemHeaders(err, body));
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
