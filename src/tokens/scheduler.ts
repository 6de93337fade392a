/**
 * Timers for token keeping, one per credential: the next refresh-ahead, retry, or idle-expiry note. The timer
 * functions are handed in, so tests move a clock and fire what is due instead of faking global timers.
 */
export interface Timers {
  setTimeout(fn: () => void, delayMs: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The process's timers, unref'd: a pending refresh never keeps the process alive. */
export const systemTimers: Timers = {
  setTimeout: (fn, delayMs) => setTimeout(fn, delayMs).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** Node's timers overflow (and fire at once) past 2^31-1 ms. */
const MAX_TIMER_MS = 2_147_483_647;

export class Scheduler {
  readonly #pending = new Map<string, unknown>();
  #closed = false;

  constructor(
    private readonly timers: Timers,
    private readonly nowMs: () => number,
  ) {}

  /** Run `fn` at `atMs` for `key`, replacing whatever was scheduled for it. */
  at(key: string, atMs: number, fn: () => void): void {
    this.cancel(key);
    if (this.#closed) return;
    const delayMs = Math.min(MAX_TIMER_MS, Math.max(0, atMs - this.nowMs()));
    const handle = this.timers.setTimeout(() => {
      this.#pending.delete(key);
      fn();
    }, delayMs);
    this.#pending.set(key, handle);
  }

  cancel(key: string): void {
    const handle = this.#pending.get(key);
    if (handle === undefined) return;
    this.timers.clearTimeout(handle);
    this.#pending.delete(key);
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    this.#closed = true;
    for (const key of [...this.#pending.keys()]) this.cancel(key);
  }
}
