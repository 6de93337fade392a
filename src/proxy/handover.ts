/**
 * The app's socket once Node handed it over for an upgrade: handed back to the HTTP server when the sidecar declines
 * the upgrade, or spliced to the vendor's socket once the vendor's 101 is relayed.
 *
 * The splice carries the bytes both ways. WebSocket frames (RFC 6455 §5) are opaque here: the sidecar adds the token
 * to the opening handshake (RFC 6455 §4) only, so nothing after it depends on the token, and an open connection
 * outlives any token refresh.
 *
 * `pipe()` both ways gives back-pressure (a socket whose peer does not read pauses the other) and passes a clean end
 * (FIN) on; a reset or error on either side destroys both, so neither peer waits on a half that is gone.
 */
import type { IncomingMessage, Server } from 'node:http';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { LAST_ANSWER_LINGER_MS } from '../http/problem.js';

/**
 * An upgrade the sidecar does not perform (`h2c` above all: Java's HttpClient sends `Upgrade: h2c` on plain-http
 * requests by default, `curl --http2` too). RFC 9110 §7.8 lets a server ignore it and answer in HTTP/1.1, which is
 * what the sidecar did before it listened for 'upgrade'. Node 20 cannot decline an upgrade per request, so the request
 * goes back to the server as a new connection: its head rebuilt without the upgrade headers, then the bytes already
 * read (body, pipelined requests). Node documents emitting 'connection' to inject a socket; the CONNECT tunnel does too.
 */
export function serveWithoutUpgrade(server: Server, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  let text = `${req.method ?? 'GET'} ${req.url ?? '/'} HTTP/${req.httpVersion}\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? '';
    let value = raw[i + 1] ?? '';
    const lower = name.toLowerCase();
    if (lower === 'upgrade' || lower === 'http2-settings') continue;
    if (lower === 'connection') {
      value = value
        .split(',')
        .map((o) => o.trim())
        .filter((o) => o !== '' && !['upgrade', 'http2-settings'].includes(o.toLowerCase()))
        .join(', ');
      if (value === '') continue;
    }
    text += `${name}: ${value}\r\n`;
  }
  // Header values are latin1 as Node decoded them: the same bytes go back.
  socket.unshift(Buffer.concat([Buffer.from(`${text}\r\n`, 'latin1'), head]));
  server.emit('connection', socket);
  socket.resume();
}

/** `HTTP/1.1 status text`, the headers (`[name, value, …]`) and the blank line. */
export function statusLine(statusCode: number, statusText: string, headers: readonly string[]): string {
  let head = `HTTP/1.1 ${statusCode} ${statusText}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i] ?? ''}: ${headers[i + 1] ?? ''}\r\n`;
  return `${head}\r\n`;
}

/** End the app's connection after a final answer; a client that neither reads nor closes does not keep it. */
export function closeAfterAnswer(socket: Duplex): void {
  socket.resume();
  socket.end();
  const linger = setTimeout(() => socket.destroy(), LAST_ANSWER_LINGER_MS);
  linger.unref();
  socket.once('close', () => clearTimeout(linger));
}

/**
 * How a spliced connection ended: `closed` in order (FIN, after the close frames of RFC 6455 §7 as a rule), silence
 * past the idle timeout, a reset or error on either side, or shutdown.
 */
export type SpliceEnd = 'closed' | 'idle' | 'reset' | 'shutdown';

/**
 * After one side closed cleanly (its FIN passed on), how long the other may take to close in turn before it is
 * destroyed: RFC 6455 §7.1.1 has the server close TCP first and the client follow; a peer that never does must not
 * hold its socket forever (the app's socket is half-open capable, as Node's HTTP server makes it).
 */
export const CLOSE_LINGER_MS = 5_000;

export interface SpliceReport {
  end: SpliceEnd;
  /** The side whose socket failed or closed first (in an orderly close both FINs cross: either may come first). */
  first: 'app' | 'vendor';
  durationMs: number;
}

export class Splice {
  readonly #openedMs = performance.now();
  #end: SpliceEnd | undefined;
  #appEnded = false;
  #vendorEnded = false;
  #first: 'app' | 'vendor' | undefined;
  #closedSides = 0;
  #linger: NodeJS.Timeout | undefined;

  constructor(
    private readonly app: Duplex,
    private readonly vendor: Duplex,
    /** No traffic either way for this long cuts both sides (`timeouts.idle`); undefined on `streaming` routes. */
    private readonly idleMs: number | undefined,
    private readonly onClosed: (report: SpliceReport) => void,
  ) {}

  /** `appHead`: bytes the app sent right behind its handshake (Node read them with the request head). */
  start(appHead: Buffer): void {
    const { app, vendor } = this;
    // Every socket has an error listener from here on: an unhandled 'error' would end the process.
    app.on('error', () => this.#reset('app'));
    vendor.on('error', () => this.#reset('vendor'));
    app.once('end', () => (this.#appEnded = true));
    vendor.once('end', () => (this.#vendorEnded = true));
    app.once('close', () => this.#closed('app'));
    vendor.once('close', () => this.#closed('vendor'));
    // Either socket sees every byte of both directions (it reads one, writes the other), so one timer is the
    // connection's: Node re-arms a socket's timeout on each read and each write.
    const timed = app instanceof Socket ? app : vendor instanceof Socket ? vendor : undefined;
    if (this.idleMs !== undefined) timed?.setTimeout(this.idleMs, this.#idle);
    if (appHead.length > 0) vendor.write(appHead);
    app.pipe(vendor);
    vendor.pipe(app);
  }

  /** Shutdown: cut both sides now (a draining listener cannot reach upgraded sockets itself). */
  close(): void {
    this.#end ??= 'shutdown';
    this.app.destroy();
    this.vendor.destroy();
  }

  readonly #idle = (): void => {
    this.#end ??= 'idle';
    this.app.destroy();
    this.vendor.destroy();
  };

  #reset(side: 'app' | 'vendor'): void {
    this.#first ??= side;
    this.#end ??= 'reset';
    this.app.destroy();
    this.vendor.destroy();
  }

  #closed(side: 'app' | 'vendor'): void {
    const cleanly = side === 'app' ? this.#appEnded : this.#vendorEnded;
    const other = side === 'app' ? this.vendor : this.app;
    this.#end ??= cleanly ? 'closed' : 'reset';
    this.#first ??= side;
    if (++this.#closedSides === 2) {
      clearTimeout(this.#linger);
      this.onClosed({ end: this.#end, first: this.#first, durationMs: performance.now() - this.#openedMs });
      return;
    }
    if (!cleanly) {
      // Gone without a FIN (destroyed, reset): there is no orderly close to pass on, only the loss.
      other.destroy();
      return;
    }
    // The pipe has ended the other side (its FIN follows the bytes still queued). The pipe into the closed side is
    // undone, which pauses `other`: read on, dropping what can no longer be delivered, so its peer's FIN is seen and
    // it closes; a peer that never closes is cut after the linger.
    other.resume();
    this.#linger = setTimeout(() => other.destroy(), CLOSE_LINGER_MS);
    this.#linger.unref();
  }
}
