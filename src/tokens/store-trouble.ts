/**
 * Store trouble, told once per change of state rather than once per refresh: a pod that falls back to its own token
 * calls says so with the cause (timeout, refused, auth, down, error), and says so again when the fleet shares again.
 */
import type { StoreOutage } from '../core/errors.js';
import type { Logger } from '../log.js';

export type TroubleCause = 'timeout' | 'refused' | 'auth' | 'down' | 'error';

export function causeOf(outage: StoreOutage): TroubleCause {
  if (outage.reason === 'timeout') return 'timeout';
  if (/NOAUTH|WRONGPASS|NOPERM/.test(outage.message)) return 'auth';
  if (outage.reason === 'error') return 'error';
  return /ECONNREFUSED/.test(outage.message) ? 'refused' : 'down';
}

export class StoreTrouble {
  #cause: TroubleCause | undefined;

  constructor(private readonly log: Logger) {}

  /** A store call on behalf of a token failed: this pod is on its own until the store answers again. */
  report(outage: StoreOutage): void {
    const cause = causeOf(outage);
    if (cause === this.#cause) return;
    this.#cause = cause;
    this.log.warn({ event: 'store.degraded', cause, op: outage.op, err: outage.message }, `store ${cause}: this pod fetches tokens for itself until the store answers`);
  }

  /** A refresh coordinated through the store again. */
  recovered(): void {
    if (this.#cause === undefined) return;
    this.log.info({ event: 'store.recovered', was: this.#cause }, 'store answers again: tokens are shared with the fleet');
    this.#cause = undefined;
  }
}
