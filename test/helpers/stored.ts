import type { Stored } from '../../src/core/errors.js';

/** The value of a store answer that must have worked (a test failure names the outage otherwise). */
export function ok<T>(answer: Stored<T>): T {
  if (!answer.ok) throw new Error(`store ${answer.outage.op} failed (${answer.outage.reason}): ${answer.outage.message}`);
  return answer.value;
}
