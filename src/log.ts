/**
 * pino, configured once. Redaction is a second net: the code never logs headers or secrets on purpose, and
 * `Secret` prints as [redacted] anyway; these paths catch a header object or token field that slips in.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'authorization', '*.authorization', 'headers.authorization', '*.headers.authorization',
  'headers["proxy-authorization"]', '*.headers["proxy-authorization"]',
  'access_token', '*.access_token', 'token', '*.token', 'clientSecret', '*.clientSecret', 'password', '*.password',
];

export interface LoggerOptions {
  level?: string;
  destination?: DestinationStream;
  pretty?: boolean;
}

function baseOptions(opts: LoggerOptions) {
  return {
    level: opts.level ?? process.env['LOG_LEVEL'] ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
}

const REDACT = { paths: REDACT_PATHS, censor: '[redacted]' };

function wantsPretty(opts: LoggerOptions): boolean {
  return opts.pretty ?? (process.stdout.isTTY === true && process.env['LOG_FORMAT'] !== 'json');
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const base = { ...baseOptions(opts), redact: REDACT };
  if (opts.destination) return pino(base, opts.destination);
  if (wantsPretty(opts)) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l' } } });
  }
  return pino(base);
}

export interface Loggers {
  log: Logger;
  /** The one-line-per-request log: no redaction (its fields are fixed), buffered output. */
  requestLog: Logger;
}

/**
 * The process's loggers. The per-request line is the hottest log in the product: written synchronously and through
 * pino's wildcard redaction it cost ~25 % of the proxy's CPU in a profile. So both loggers share one asynchronous
 * stdout buffer (one write per ~4 KiB of lines, flushed every second and at exit); every other log line flushes the
 * buffer at once, so lifecycle events are never delayed and lines never interleave.
 */
export function createLoggers(opts: LoggerOptions = {}): Loggers {
  const plain = baseOptions(opts);
  if (opts.destination) return { log: createLogger(opts), requestLog: pino(plain, opts.destination) };
  if (wantsPretty(opts)) {
    const log = createLogger(opts);
    return { log, requestLog: log };
  }
  const dest = pino.destination({ dest: 1, sync: false, minLength: 4096 });
  const flush = () => {
    try {
      dest.flush();
    } catch {
      // closed at exit
    }
  };
  setInterval(flush, 1_000).unref();
  process.on('exit', () => {
    try {
      dest.flushSync();
    } catch {
      // nothing left to do
    }
  });
  const log = pino(
    {
      ...plain,
      redact: REDACT,
      hooks: {
        logMethod(args, method) {
          method.apply(this, args);
          flush();
        },
      },
    },
    dest,
  );
  return { log, requestLog: pino(plain, dest) };
}

/** The audit (token lifecycle) logger: the main logger for `stdout`, else its own pino on stderr or a file. */
export function createAuditLogger(destination: string, main: Logger): Logger {
  if (destination === 'stdout') return main;
  const dest = destination === 'stderr' ? pino.destination(2) : pino.destination({ dest: destination, mkdir: true, sync: false });
  return pino(
    {
      level: main.level,
      base: { pid: process.pid, stream: 'audit' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label: string) => ({ level: label }) },
    },
    dest,
  );
}
