/**
 * Raw TCP clients for the socket-level tests: bytes written exactly as given, answers read as bytes, and a reset
 * (RST, `resetAndDestroy`) at a moment the test chooses. node:http and undici would normalise or hide all three.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface RawConn {
  readonly socket: net.Socket;
  /** Everything received so far (latin1). */
  received(): string;
  /** Resolves with what was received once `done` holds for it; rejects after `timeoutMs` or if the socket closes first. */
  until(done: (received: string) => boolean, timeoutMs?: number, what?: string): Promise<string>;
  /** Settles when the socket closes: when (performance.now()), and the error, if it ended with one. */
  readonly closed: Promise<{ atMs: number; error: string | undefined }>;
  write(bytes: string | Buffer): Promise<void>;
  /** Send an RST now (SO_LINGER 0 + close). */
  reset(): void;
}

export function connectRaw(port: number, opts: { allowHalfOpen?: boolean } = {}): Promise<RawConn> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: opts.allowHalfOpen ?? false });
    let text = '';
    let isClosed = false;
    const waiters = new Set<() => void>();
    let lastError: string | undefined;
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      for (const w of waiters) w();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      lastError = err.code ?? err.message;
    });
    const closed = new Promise<{ atMs: number; error: string | undefined }>((res) =>
      socket.once('close', () => {
        isClosed = true;
        for (const w of waiters) w();
        res({ atMs: performance.now(), error: lastError });
      }),
    );
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve({
        socket,
        received: () => text,
        until: (done, timeoutMs = 5_000, what = 'the expected bytes') =>
          new Promise<string>((res, rej) => {
            const check = () => {
              if (done(text)) {
                cleanup();
                res(text);
              } else if (isClosed) {
                cleanup();
                rej(new Error(`socket closed before ${what}; received ${JSON.stringify(text.slice(0, 300))}`));
              }
            };
            const timer = setTimeout(() => {
              cleanup();
              rej(new Error(`waited ${timeoutMs} ms for ${what} in vain; received ${JSON.stringify(text.slice(0, 300))}`));
            }, timeoutMs);
            const cleanup = () => {
              clearTimeout(timer);
              waiters.delete(check);
            };
            waiters.add(check);
            check();
          }),
        closed,
        write: (bytes) => new Promise<void>((res, rej) => socket.write(bytes, (err) => (err ? rej(err) : res()))),
        reset: () => {
          if (!socket.destroyed) socket.resetAndDestroy();
        },
      });
    });
    socket.once('error', reject);
  });
}

export interface RawAnswer {
  status: number;
  /** Lower-cased names; a repeated header keeps its last value. */
  headers: Record<string, string>;
  body: string;
  /** Bytes after this answer (a second answer, or nothing). */
  rest: string;
}

/** The first complete HTTP/1.1 answer in `text` (sized by content-length), or undefined while it is incomplete. */
export function parseAnswer(text: string): RawAnswer | undefined {
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const [statusLine = '', ...lines] = text.slice(0, end).split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? NaN);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  // 1xx answers have no body.
  const length = status < 200 ? 0 : Number(headers['content-length'] ?? 0);
  const bodyStart = end + 4;
  if (text.length < bodyStart + length) return undefined;
  return { status, headers, body: text.slice(bodyStart, bodyStart + length), rest: text.slice(bodyStart + length) };
}

export const answered = (text: string): boolean => parseAnswer(text) !== undefined;

/** Whether a process of ours is still there (a crashed child is reaped by Node, then `kill 0` fails with ESRCH). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Write `bytes` one at a time, `gapMs` apart, until `stop` is aborted or the socket is gone. */
export async function drip(conn: RawConn, bytes: string, gapMs: number, stop: AbortSignal): Promise<void> {
  for (const ch of bytes) {
    if (stop.aborted || conn.socket.destroyed || !conn.socket.writable) return;
    conn.socket.write(ch);
    await sleep(gapMs);
  }
}
