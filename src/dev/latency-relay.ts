/**
 * A TCP relay that adds latency: a client connects to 127.0.0.1:<port> and every chunk it sends reaches the
 * target `delayMs` later, and every chunk back likewise, so a round trip costs 2 × delayMs. It stands in for a busy
 * Redis, a failover or a cross-zone hop, where the server is alive but answers late; tests point a client's URL at
 * the relay instead of the server. Nothing is parsed: any protocol (RESP, HTTP, TLS) passes through unchanged.
 */
import net from 'node:net';

export interface LatencyRelay {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** The current one-way delay. */
  readonly delayMs: number;
  /** Client connections currently open (each one paired with its own connection to the target). */
  readonly connections: number;
  /** Client connections accepted so far. */
  readonly accepted: number;
  /** `url` with its host:port replaced by the relay's (scheme, credentials and path kept). */
  via(url: string): string;
  /**
   * Change the one-way delay. Applies to chunks that arrive from now on; chunks already on their way keep their due
   * time, and none overtakes an earlier one when the delay shrinks.
   */
  setDelay(ms: number): void;
  /**
   * Slow drip: from now on every chunk (both directions) is cut into `bytes`-sized pieces sent `everyMs` apart, on top
   * of the delay: a server that answers, but a trickle at a time (a saturated link, a swapping host). `undefined` stops it.
   */
  setDrip(drip: Drip | undefined): void;
  /** Stop accepting and destroy every open connection, both sides. */
  close(): Promise<void>;
}

export interface Drip {
  bytes: number;
  everyMs: number;
}

export interface LatencyRelayOptions {
  host: string;
  port: number;
  delayMs?: number;
}

/** Per direction: past this many queued bytes the sender is paused (its TCP window closes), below LOW resumed. */
const HIGH_WATER_BYTES = 1 << 20;
const LOW_WATER_BYTES = 1 << 18;

type Item = { dueMs: number } & ({ kind: 'data'; chunk: Buffer } | { kind: 'fin' } | { kind: 'reset' });

/**
 * One direction of one connection. A single FIFO with one timer, rather than a timer per chunk: timers that fire
 * close together may run in any order, and a reordered RESP stream is a corrupt one.
 */
class Lane {
  readonly #queue: Item[] = [];
  #queuedBytes = 0;
  #timer: NodeJS.Timeout | undefined;
  #awaitingDrain = false;
  #pausedSource = false;
  /** A FIN or reset is queued: nothing may follow it. */
  #ended = false;
  /** Due time of the last piece queued: a dripped piece is due `everyMs` after the one before it. */
  #lastDueMs = 0;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly delay: () => number,
    private readonly drip: () => Drip | undefined,
  ) {}

  data(chunk: Buffer): void {
    if (this.#ended) return;
    const dueMs = performance.now() + this.delay();
    const drip = this.drip();
    if (!drip) this.#push(chunk, Math.max(dueMs, this.#lastDueMs));
    else for (let at = 0; at < chunk.length; at += drip.bytes) this.#push(chunk.subarray(at, at + drip.bytes), Math.max(dueMs, this.#lastDueMs + drip.everyMs));
    this.#queuedBytes += chunk.length;
    if (this.#queuedBytes > HIGH_WATER_BYTES && !this.#pausedSource) {
      this.#pausedSource = true;
      this.from.pause();
    }
    this.#pump();
  }

  #push(chunk: Buffer, dueMs: number): void {
    this.#queue.push({ kind: 'data', chunk, dueMs });
    this.#lastDueMs = dueMs;
  }

  /** The source half-closed (`fin`) or broke (`reset`): passed on after the data sent before it, like a real FIN. */
  end(how: 'fin' | 'reset'): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#queue.push({ kind: how, dueMs: Math.max(performance.now() + this.delay(), this.#lastDueMs) });
    this.#pump();
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#queue.length = 0;
  }

  /** Delivers what is due, head first: after a shrunk delay a later item waits for the one ahead of it. */
  #pump(): void {
    if (this.#timer !== undefined || this.#awaitingDrain) return;
    for (let head = this.#queue[0]; head; head = this.#queue[0]) {
      const waitMs = head.dueMs - performance.now();
      if (waitMs > 0) {
        this.#timer = setTimeout(() => {
          this.#timer = undefined;
          this.#pump();
        }, Math.ceil(waitMs));
        return;
      }
      this.#queue.shift();
      if (head.kind === 'data') {
        this.#queuedBytes -= head.chunk.length;
        if (this.#pausedSource && this.#queuedBytes < LOW_WATER_BYTES) {
          this.#pausedSource = false;
          this.from.resume();
        }
      }
      if (this.to.destroyed) continue; // the other side is gone; its own close handler tears this pair down
      if (head.kind === 'fin') this.to.end();
      else if (head.kind === 'reset') resetAndDestroy(this.to);
      else if (!this.to.write(head.chunk)) {
        // The receiver is slow: hold the queue (and, once it fills, the sender) until it drains.
        this.#awaitingDrain = true;
        this.to.once('drain', () => {
          this.#awaitingDrain = false;
          this.#pump();
        });
        return;
      }
    }
  }
}

/** An RST, so the peer sees a reset connection as the relay saw it (a plain destroy would send a FIN). */
function resetAndDestroy(socket: net.Socket): void {
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy(); // not connected (yet): nothing to reset
  }
}

export async function startLatencyRelay(opts: LatencyRelayOptions): Promise<LatencyRelay> {
  let delayMs = validDelay(opts.delayMs ?? 0);
  let accepted = 0;
  /** Every open socket, both sides, so close() can destroy them. */
  const sockets = new Set<net.Socket>();
  const clients = new Set<net.Socket>();
  const lanes = new Set<Lane>();
  const delay = () => delayMs;
  let drip: Drip | undefined;
  const dripping = () => drip;

  // allowHalfOpen on both sides: a client's FIN must reach the target as a FIN (after the data before it), not
  // close the pair at once, and the target may still answer on the other half.
  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    accepted++;
    // Connected at once: the relay delays data and closes, not the TCP handshake (a client's connect timeout is
    // not what these tests are about).
    const target = net.connect({ host: opts.host, port: opts.port, allowHalfOpen: true, noDelay: true });
    const up = new Lane(client, target, delay, dripping);
    const down = new Lane(target, client, delay, dripping);
    clients.add(client);
    for (const s of [client, target]) sockets.add(s);
    for (const l of [up, down]) lanes.add(l);
    const wire = (socket: net.Socket, lane: Lane) => {
      socket.on('data', (chunk: Buffer) => lane.data(chunk));
      socket.on('end', () => lane.end('fin'));
      // Errors (ECONNRESET, or ECONNREFUSED from a dead target) always end in 'close'; they are passed on there.
      socket.on('error', () => undefined);
      socket.on('close', () => {
        sockets.delete(socket);
        clients.delete(socket);
        // Closed without a FIN first (reset, refused, destroyed): the other side is reset too.
        lane.end('reset');
        if (client.destroyed && target.destroyed) for (const l of [up, down]) lanes.delete(l);
      });
    };
    wire(client, up);
    wire(target, down);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (typeof address !== 'object' || address === null) throw new Error('latency relay: no address');
  const port = address.port;
  let closing: Promise<void> | undefined;

  return {
    host: '127.0.0.1',
    port,
    get delayMs() {
      return delayMs;
    },
    get connections() {
      return clients.size;
    },
    get accepted() {
      return accepted;
    },
    via(url: string) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString().replace(/\/$/, '');
    },
    setDelay(ms: number) {
      delayMs = validDelay(ms);
    },
    setDrip(d: Drip | undefined) {
      if (d && !(Number.isInteger(d.bytes) && d.bytes >= 1 && Number.isFinite(d.everyMs) && d.everyMs >= 0)) {
        throw new Error(`latency relay: drip needs whole bytes >= 1 and everyMs >= 0, got ${JSON.stringify(d)}`);
      }
      drip = d;
    },
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        for (const lane of lanes) lane.stop();
        lanes.clear();
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      })),
  };
}

function validDelay(ms: number): number {
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`latency relay: delay must be a finite number >= 0, got ${ms}`);
  return ms;
}
