/**
 * Every log line a test's sidecar writes (in-process loggers and child processes alike) is also appended to a file in
 * the run's log directory, so that global teardown can scan the whole suite's output for secrets once
 * (test/helpers/leak-scan.ts), beyond what each test asserts about its own lines.
 */
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DestinationStream } from 'pino';
import { inject } from 'vitest';

let file: string | undefined | null;

function runLogFile(): string | undefined {
  if (file === undefined) {
    let dir: string | undefined;
    try {
      dir = inject('testLogDir');
    } catch {
      dir = undefined; // outside a vitest worker (a script importing a helper)
    }
    file = dir ? join(dir, `worker-${process.pid}.log`) : null;
  }
  return file ?? undefined;
}

/** Append lines to the run's log file (a line may hold several, newline-separated). */
export function recordLines(text: string): void {
  const target = runLogFile();
  if (target) appendFileSync(target, text.endsWith('\n') ? text : `${text}\n`);
}

/** A pino destination that keeps each line in `lines` (for the test's own assertions) and records it for the scan. */
export function capturingDestination(lines: string[]): DestinationStream {
  return {
    write: (line: string) => {
      lines.push(line);
      recordLines(line);
    },
  };
}
