/**
 * pino, configured once. Redaction is a second net: the code never logs headers or secrets on purpose, and
 * `Secret` prints as [redacted] anyway; these paths catch a header object or token field that slips in.
 */
import { pino, type Logger, type DestinationStream } from 'pino';
import { BufferedAccessLog, pinoAccessLog, type AccessLog } from './proxy/access-log.js';

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
  accessLog: AccessLog;
}

/**
 * The process's loggers. The per-request line goes through a batching writer (see proxy/access-log.ts); both write
 * into one asynchronous stdout stream, and every other log line first hands over the batched request lines, so order
 * is kept and lifecycle events are never delayed.
 */
export function createLoggers(opts: LoggerOptions = {}): Loggers {
  const level = opts.level ?? process.env['LOG_LEVEL'] ?? 'info';
  // The request line is an info line: off at warn and above (and for unknown levels, which pino rejects anyway).
  const requestsOn = (pino.levels.values[level] ?? Number.POSITIVE_INFINITY) <= (pino.levels.values['info'] ?? 30);
  const off: AccessLog = { write: () => undefined, flush: () => undefined };
  if (opts.destination || wantsPretty(opts)) {
    const log = createLogger(opts);
    return { log, accessLog: requestsOn ? pinoAccessLog(opts.destination ? pino(baseOptions(opts), opts.destination) : log) : off };
  }
  const dest = pino.destination({ dest: 1, sync: false });
  const accessLog = requestsOn ? new BufferedAccessLog((chunk) => dest.write(chunk)) : off;
  setInterval(() => accessLog.flush(), 1_000).unref();
  process.on('exit', () => {
    try {
      accessLog.flush();
      dest.flushSync();
    } catch {
      // nothing left to do
    }
  });
  const log = pino(
    {
      ...baseOptions(opts),
      redact: REDACT,
      hooks: {
        logMethod(args, method) {
          accessLog.flush();
          method.apply(this, args);
        },
      },
    },
    dest,
  );
  return { log, accessLog };
}

/** The audit (token lifecycle) logger: the main logger for `stdout`, else its own pino on stderr or a file. */
export function createAuditLogger(destination: string, main: Logger): Logger {
  if (destination === 'stdout') return main;
  const dest = destination === 'stderr' ? pino.destination(2) : pino.destination({ dest: destination, mkdir: true, sync: false });
  return pino({ ...baseOptions({ level: main.level }), base: { pid: process.pid, stream: 'audit' }, redact: REDACT }, dest);
}
