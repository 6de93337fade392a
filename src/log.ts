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

export function createLogger(opts: { level?: string; destination?: DestinationStream; pretty?: boolean } = {}): Logger {
  const level = opts.level ?? process.env['LOG_LEVEL'] ?? 'info';
  const base = {
    level,
    base: { pid: process.pid },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (opts.destination) return pino(base, opts.destination);
  if (opts.pretty ?? (process.stdout.isTTY && process.env['LOG_FORMAT'] !== 'json')) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l' } } });
  }
  return pino(base);
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
