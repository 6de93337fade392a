/**
 * The process's loggers, composed here at the composition root (log.ts knows nothing of the request log).
 */
import { pino } from 'pino';
import { baseOptions, createLogger, REDACT, wantsPretty, type Logger, type LoggerOptions } from '../log.js';
import { BufferedAccessLog, pinoAccessLog, type AccessLog } from '../proxy/access-log.js';

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

