/**
 * A thin memcached client on the classic text protocol over node:net (why our own: see memcached.ts): one pipelined
 * connection per server, replies matched to requests in order. A call the store gave up on stays in the queue, so its
 * late reply is still matched to it and dropped, never handed to the next call. The connection is up ("ready") only
 * once the server answered `version`, so a frozen server whose kernel still accepts connections is not mistaken for
 * a live one; a connection whose oldest request waits longer than `staleReplyMs` is torn down and dialled again
 * (a half-open connection would otherwise look alive forever).
 */
import net from 'node:net';

export interface McEntry {
  readonly value: string;
  /** The cas unique, for `cas` (compare-and-swap). */
  readonly cas: string;
}

export type CasReply = 'STORED' | 'EXISTS' | 'NOT_FOUND';

/** The server answered with ERROR, CLIENT_ERROR or SERVER_ERROR: an answer from a live server, not an outage of it. */
export class McReplyError extends Error {}

/** No connection, or it closed before the reply came. */
export class McConnectionError extends Error {}

export interface McServerOptions {
  host: string;
  port: number;
  /** TCP connect plus the `version` handshake. */
  connectTimeoutMs: number;
  /** Tear the connection down when a request has waited this long for its reply. */
  staleReplyMs: number;
  onUp(): void;
  onDown(reason: string | undefined): void;
  /** A connection attempt failed (refused, timed out): the cause, for a log line. */
  onConnectFailed(reason: string): void;
}

interface Pending {
  readonly kind: 'get' | 'line';
  readonly sentAtMs: number;
  readonly entries: Map<string, McEntry>;
  resolve(value: string | Map<string, McEntry>): void;
  reject(err: Error): void;
}

/** A key memcached accepts: 1–250 bytes, no spaces or control characters. */
const KEY = /^[\x21-\x7e]{1,250}$/;
/** A reply line longer than this means we are out of step with the server. */
const MAX_LINE_BYTES = 8_192;
const CRLF = Buffer.from('\r\n');
const reconnectDelayMs = (attempt: number) => Math.min(100 * 2 ** Math.min(attempt, 5), 2_000);

export class McServer {
  readonly address: string;
  readonly #o: McServerOptions;
  #socket: net.Socket | undefined;
  #ready = false;
  #closed = false;
  #attempt = 0;
  #reconnectTimer: NodeJS.Timeout | undefined;
  readonly #staleCheck: NodeJS.Timeout;
  #pending: Pending[] = [];
  #buf: Buffer = Buffer.alloc(0);
  /** Inside a `get` reply: the data block of this VALUE line comes next. */
  #block: { key: string; bytes: number; cas: string } | undefined;
  /** Why the connection is not up (the socket's error text), for the outages it causes. */
  lastError: string | undefined;

  constructor(o: McServerOptions) {
    this.#o = o;
    this.address = `${o.host}:${o.port}`;
    this.#staleCheck = setInterval(() => this.#checkStale(), Math.max(50, Math.min(250, Math.floor(o.staleReplyMs / 4))));
    this.#staleCheck.unref();
    this.#connect();
  }

  get ready(): boolean {
    return this.#ready;
  }

  /** Values by key; a key that is absent is a miss. */
  gets(keys: readonly string[]): Promise<Map<string, McEntry>> {
    return this.#send('get', `gets ${keys.join(' ')}\r\n`, keys) as Promise<Map<string, McEntry>>;
  }

  /** Store only if absent: true when stored. */
  async add(key: string, value: string, ttlS: number): Promise<boolean> {
    return (await this.#store('add', key, value, ttlS)) === 'STORED';
  }

  async set(key: string, value: string, ttlS: number): Promise<void> {
    const reply = await this.#store('set', key, value, ttlS);
    if (reply !== 'STORED') throw new McReplyError(`set: ${reply}`);
  }

  /** Store only if unchanged since the `gets` that returned `cas`. */
  async cas(key: string, value: string, ttlS: number, cas: string): Promise<CasReply> {
    const reply = await this.#store('cas', key, value, ttlS, cas);
    if (reply === 'STORED' || reply === 'EXISTS' || reply === 'NOT_FOUND') return reply;
    throw new McReplyError(`cas: ${reply}`);
  }

  /**
   * Delete only if unchanged: the text protocol's `delete` has no compare, but a `cas` with a negative exptime stores
   * an item that is already expired (protocol.txt: "the item is immediately expired"), which is a delete.
   */
  casDelete(key: string, cas: string): Promise<CasReply> {
    return this.cas(key, '', -1, cas);
  }

  async delete(key: string): Promise<boolean> {
    const reply = (await this.#send('line', `delete ${key}\r\n`, [key])) as string;
    if (reply === 'DELETED' || reply === 'NOT_FOUND') return reply === 'DELETED';
    throw new McReplyError(`delete: ${reply}`);
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#staleCheck);
    clearTimeout(this.#reconnectTimer);
    this.#socket?.destroy();
    this.#failAll(new McConnectionError('client closed'));
  }

  async #store(cmd: 'add' | 'set' | 'cas', key: string, value: string, ttlS: number, cas?: string): Promise<string> {
    const data = Buffer.from(value, 'utf8');
    const head = `${cmd} ${key} 0 ${Math.trunc(ttlS)} ${data.length}${cas === undefined ? '' : ` ${cas}`}\r\n`;
    return (await this.#send('line', Buffer.concat([Buffer.from(head, 'latin1'), data, CRLF]), [key])) as string;
  }

  #send(kind: Pending['kind'], payload: string | Buffer, keys: readonly string[], force = false): Promise<string | Map<string, McEntry>> {
    for (const key of keys) if (!KEY.test(key)) return Promise.reject(new McReplyError('not a valid memcached key'));
    const socket = this.#socket;
    if (!socket || (!this.#ready && !force)) return Promise.reject(new McConnectionError(`not connected to ${this.address}${this.lastError ? ` (${this.lastError})` : ''}`));
    return new Promise((resolve, reject) => {
      this.#pending.push({ kind, sentAtMs: Date.now(), entries: new Map(), resolve, reject });
      socket.write(payload);
    });
  }

  #connect(): void {
    if (this.#closed) return;
    const socket = net.connect({ host: this.#o.host, port: this.#o.port });
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 5_000);
    let failure: string | undefined;
    const giveUp = setTimeout(() => {
      failure = `no answer from ${this.address} within ${this.#o.connectTimeoutMs} ms`;
      socket.destroy();
    }, this.#o.connectTimeoutMs);
    giveUp.unref();
    socket.on('data', (chunk: Buffer) => this.#onData(socket, chunk));
    socket.on('error', (err) => (failure = err.message));
    socket.once('connect', () => {
      // The handshake: a frozen server completes TCP (its kernel does) but never answers this.
      this.#send('line', 'version\r\n', [], true).then(
        (reply) => {
          clearTimeout(giveUp);
          if (typeof reply !== 'string' || !reply.startsWith('VERSION ')) return socket.destroy();
          this.#ready = true;
          this.#attempt = 0;
          this.lastError = undefined;
          this.#o.onUp();
        },
        () => undefined, // the close handler tells why
      );
    });
    socket.once('close', () => {
      clearTimeout(giveUp);
      if (this.#socket === socket) this.#socket = undefined;
      const wasReady = this.#ready;
      this.#ready = false;
      this.#buf = Buffer.alloc(0);
      this.#block = undefined;
      if (failure !== undefined) this.lastError = failure;
      this.#failAll(new McConnectionError(`connection to ${this.address} closed${failure ? ` (${failure})` : ''}`));
      if (this.#closed) return;
      if (wasReady) this.#o.onDown(failure);
      else this.#o.onConnectFailed(failure ?? 'connection closed');
      // Not unref'd: like ioredis, a store that is still dialling keeps the process alive (a start waiting for it
      // would otherwise end with nothing left to do); close() clears it.
      this.#reconnectTimer = setTimeout(() => this.#connect(), reconnectDelayMs(this.#attempt++));
    });
  }

  #failAll(err: Error): void {
    const pending = this.#pending;
    this.#pending = [];
    for (const p of pending) p.reject(err);
  }

  #checkStale(): void {
    const oldest = this.#pending[0];
    if (oldest && this.#socket && Date.now() - oldest.sentAtMs > this.#o.staleReplyMs) {
      this.lastError = `no reply from ${this.address} for ${this.#o.staleReplyMs} ms`;
      this.#socket.destroy();
    }
  }

  /** Out of step with the server (a reply we cannot place): start over on a new connection. */
  #desync(socket: net.Socket, why: string): void {
    this.lastError = `protocol error: ${why}`;
    socket.destroy();
  }

  #onData(socket: net.Socket, chunk: Buffer): void {
    if (socket !== this.#socket) return;
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    for (;;) {
      const head = this.#pending[0];
      const block = this.#block;
      if (block) {
        if (this.#buf.length < block.bytes + 2) return;
        if (!head || this.#buf[block.bytes] !== 0x0d || this.#buf[block.bytes + 1] !== 0x0a) return this.#desync(socket, 'bad data block');
        head.entries.set(block.key, { value: this.#buf.toString('utf8', 0, block.bytes), cas: block.cas });
        this.#buf = this.#buf.subarray(block.bytes + 2);
        this.#block = undefined;
        continue;
      }
      const nl = this.#buf.indexOf(CRLF);
      if (nl < 0) {
        if (this.#buf.length > MAX_LINE_BYTES) this.#desync(socket, 'reply line too long');
        return;
      }
      const line = this.#buf.toString('latin1', 0, nl);
      this.#buf = this.#buf.subarray(nl + 2);
      if (!head) return this.#desync(socket, 'a reply to no request');
      if (line === 'ERROR' || line.startsWith('CLIENT_ERROR') || line.startsWith('SERVER_ERROR')) {
        this.#pending.shift();
        head.reject(new McReplyError(line));
        continue;
      }
      if (head.kind === 'line') {
        this.#pending.shift();
        head.resolve(line);
        continue;
      }
      if (line === 'END') {
        this.#pending.shift();
        head.resolve(head.entries);
        continue;
      }
      const value = /^VALUE (\S+) \d+ (\d+) (\d+)$/.exec(line);
      if (!value) return this.#desync(socket, 'unexpected reply to gets');
      this.#block = { key: value[1] ?? '', bytes: Number(value[2]), cas: value[3] ?? '' };
    }
  }
}
