/**
 * The one-line-per-request log. It is the hottest log in the product: through pino (serializer, redaction, one write
 * per line) it cost ~10 µs of CPU per request, a quarter of the whole forwarding cost, in a profile. So in production
 * the line is built from a fixed template (every field is ours or JSON-escaped) and lines are handed over in batches. The shape is exactly pino's, so log pipelines see one format.
 */
import type { Logger } from '../log.js';

export interface AccessLogEntry {
  route: string | undefined;
  method: string | undefined;
  status: number;
  durationMs: number;
  tokenSource: string | undefined;
  /** How long the request waited for a token (only when it was not in memory). */
  tokenWaitMs?: number | undefined;
  replayed: boolean;
  code: string | undefined;
  requestId: string;
}

export interface AccessLog {
  write(entry: AccessLogEntry): void;
  /** Hand buffered lines to the sink now (before any other log line, so order is kept). */
  flush(): void;
}

/** Through a pino logger: for tests (captured destinations) and pretty terminals. */
export function pinoAccessLog(logger: Logger): AccessLog {
  return {
    write: (e) =>
      logger.info(
        {
          event: 'request',
          route: e.route,
          method: e.method,
          status: e.status,
          durationMs: e.durationMs,
          tokenSource: e.tokenSource,
          ...(e.tokenWaitMs === undefined ? {} : { tokenWaitMs: e.tokenWaitMs }),
          ...(e.replayed ? { replayed: true } : {}),
          ...(e.code ? { code: e.code } : {}),
          requestId: e.requestId,
        },
        'request',
      ),
    flush: () => undefined,
  };
}

const BATCH_BYTES = 16 * 1024;
/**
 * Longest a line waits for its batch. Flushing every event-loop turn cost ~25 µs per request under load (one
 * asynchronous write, a thread-pool round trip, per few requests); a 1 s batch kept ~2 MB of lines alive long enough
 * to be promoted (~20 MB more peak RSS). At 16 KiB or 50 ms, whichever comes first, a loaded sidecar writes every few
 * milliseconds and its lines still die young.
 */
const BATCH_DELAY_MS = 50;

export class BufferedAccessLog implements AccessLog {
  #batch = '';
  #timer: NodeJS.Timeout | undefined;
  /** The ISO time of the last line, reused while the millisecond has not changed. */
  #timeMs = 0;
  #time = '';
  readonly #prefix = `{"level":"info","time":"`;
  readonly #pid = `","pid":${process.pid},"event":"request"`;

  constructor(private readonly sink: (chunk: string) => void) {}

  write(e: AccessLogEntry): void {
    const nowMs = Date.now();
    if (nowMs !== this.#timeMs) {
      this.#timeMs = nowMs;
      this.#time = new Date(nowMs).toISOString();
    }
    // route: [a-z0-9-] by the schema; tokenSource and code: ours. Everything else is escaped.
    this.#batch +=
      `${this.#prefix}${this.#time}${this.#pid}` +
      (e.route === undefined ? '' : `,"route":"${e.route}"`) +
      (e.method === undefined ? '' : `,"method":${JSON.stringify(e.method)}`) +
      `,"status":${e.status},"durationMs":${e.durationMs}` +
      (e.tokenSource === undefined ? '' : `,"tokenSource":"${e.tokenSource}"`) +
      (e.tokenWaitMs === undefined ? '' : `,"tokenWaitMs":${e.tokenWaitMs}`) +
      (e.replayed ? ',"replayed":true' : '') +
      (e.code === undefined ? '' : `,"code":"${e.code}"`) +
      `,"requestId":${JSON.stringify(e.requestId)},"msg":"request"}\n`;
    if (this.#batch.length >= BATCH_BYTES) this.flush();
    else this.#timer ??= setTimeout(this.#flushLater, BATCH_DELAY_MS).unref();
  }

  readonly #flushLater = (): void => {
    this.#timer = undefined;
    this.flush();
  };

  flush(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.#batch === '') return;
    const chunk = this.#batch;
    this.#batch = '';
    this.sink(chunk);
  }
}
