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

export function baseOptions(opts: LoggerOptions) {
  return {
    level: opts.level ?? process.env['LOG_LEVEL'] ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
}

export const REDACT = { paths: REDACT_PATHS, censor: '[redacted]' };

export function wantsPretty(opts: LoggerOptions): boolean {
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

/** The audit (token lifecycle) logger: the main logger for `stdout`, else its own pino on stderr or a file. */
export function createAuditLogger(destination: string, main: Logger): Logger {
  if (destination === 'stdout') return main;
  const dest = destination === 'stderr' ? pino.destination(2) : pino.destination({ dest: destination, mkdir: true, sync: false });
  return pino({ ...baseOptions({ level: main.level }), base: { pid: process.pid, stream: 'audit' }, redact: REDACT }, dest);
}
