/**
 * The one place a SidecarError becomes an HTTP answer, for the proxy, the admin API and the webhook: RFC 9457
 * problem+json, the status from the code table in core/errors.ts, and `x-token-sidecar-error: CODE`.
 */
import type { ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { SidecarError } from '../core/errors.js';

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

/**
 * How long a socket that got its last answer (a refused CONNECT, a malformed request) may stay open for the client to
 * read it and close. Past it the socket is destroyed, so a client that neither reads nor closes holds no connection
 * slot and cannot stall a drain (a handed-over CONNECT socket is out of reach of `closeAllConnections`).
 */
export const LAST_ANSWER_LINGER_MS = 1_000;

/** Same answer on a raw socket (CONNECT requests never get a ServerResponse), then the connection is closed. */
export function sendErrorOnSocket(socket: Duplex, err: SidecarError): void {
  const body = problemBody(err);
  const head = Object.entries({ ...problemHeaders(err, body), connection: 'close' })
    .map(([k, v]) => `${k}: ${v}`)
    .join('\r\n');
  endWith(socket, `HTTP/1.1 ${err.status} ${err.title}\r\n${head}\r\n\r\n${body}`);
}

/** A client that went away: nothing to tell, and nothing to do but let the socket close. */
function ignoreSocketError(): void {}

/**
 * Write a last answer and close. The client may reset at any moment (before, while or after this writes): on a socket
 * Node handed over (CONNECT) nobody else listens for 'error', and an unhandled one ends the process.
 */
function endWith(socket: Duplex, answer: string | Buffer): void {
  socket.on('error', ignoreSocketError);
  if (socket.destroyed) return;
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  // Read and drop what the client still sends (tunnel bytes, the rest of a bad request), so its FIN is seen and
  // the socket closes, and no unread input turns our close into a reset that could discard the answer.
  socket.resume();
  socket.end(answer);
  const linger = setTimeout(() => socket.destroy(), LAST_ANSWER_LINGER_MS);
  linger.unref();
  socket.once('close', () => clearTimeout(linger));
}

/** What Node writes for the client errors that have no code of ours (its own answers, kept). */
const REQUEST_TIMEOUT_408 = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n';
const HEADERS_TOO_LARGE_431 = 'HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n';
const CONTENT_TOO_LARGE_413 = 'HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n\r\n';

/**
 * The answer to h2c with prior knowledge, in HTTP/2 itself: the server preface (an empty SETTINGS frame, RFC 9113
 * §3.4), then GOAWAY with HTTP_1_1_REQUIRED (§7, code 0xd) and a reason as debug data, which curl, Node's http2 and
 * nghttp2-based clients report. The app listener speaks HTTP/1.1 only (docs/clients.md).
 */
const H2C_REFUSAL = h2cRefusal('token-sidecar speaks HTTP/1.1 on this port: call it without HTTP/2 (no --http2-prior-knowledge, no h2c)');

function h2cRefusal(reason: string): Buffer {
  const debug = Buffer.from(reason, 'latin1');
  const frame = (type: number, payload: Buffer): Buffer => {
    const head = Buffer.alloc(9);
    head.writeUIntBE(payload.length, 0, 3);
    head[3] = type;
    return Buffer.concat([head, payload]);
  };
  const goaway = Buffer.alloc(8);
  goaway.writeUInt32BE(0, 0); // last stream id: none was processed
  goaway.writeUInt32BE(0xd, 4); // HTTP_1_1_REQUIRED
  return Buffer.concat([frame(0x4, Buffer.alloc(0)), frame(0x7, Buffer.concat([goaway, debug]))]);
}

/** The part of Node's socket state that says whether an answer on it has started (what Node's own default checks). */
interface HttpSocket extends Duplex {
  _httpMessage?: { headersSent?: boolean } | null;
}

/**
 * A server's 'clientError' (the request could not be parsed, its headers or body did not arrive within
 * headersTimeout/requestTimeout, or the client reset): answer if nothing was written on the connection for this
 * request yet, then close. Unparsable requests get the typed 400 `BAD_REQUEST`; timeouts and size limits keep Node's
 * 408, 431 and 413. Never writes into an answer already started (that would corrupt it): the connection is cut instead.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  socket.on('error', ignoreSocketError);
  const started = (socket as HttpSocket)._httpMessage?.headersSent === true;
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE' || started || !socket.writable) {
    socket.destroy();
    return;
  }
  switch (err.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return endWith(socket, REQUEST_TIMEOUT_408);
    case 'HPE_HEADER_OVERFLOW':
      return endWith(socket, HEADERS_TOO_LARGE_431);
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return endWith(socket, CONTENT_TOO_LARGE_413);
    case 'HPE_PAUSED_H2_UPGRADE':
      // `PRI * HTTP/2.0`: h2c with prior knowledge. An HTTP/1.1 answer reads as an empty reply to an h2 client.
      return endWith(socket, H2C_REFUSAL);
    default:
      return sendErrorOnSocket(socket, new SidecarError('BAD_REQUEST', `malformed HTTP request (${err.code ?? 'parse error'})`));
  }
}
