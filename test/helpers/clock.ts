import type { Timers } from '../../src/tokens/scheduler.js';

interface Pending {
  id: number;
  atMs: number;
  fn: () => void;
}

/**
 * A clock and the timers on it, handed to the code under test: time moves only when the test says so, and a timer
 * fires only when `advance` passes its time. Nothing global is faked.
 */
export class ManualClock implements Timers {
  #pending: Pending[] = [];
  #nextId = 1;

  constructor(public nowMs: number) {}

  readonly now = (): number => this.nowMs;

  setTimeout(fn: () => void, delayMs: number): unknown {
    const id = this.#nextId++;
    this.#pending.push({ id, atMs: this.nowMs + Math.max(0, delayMs), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#pending = this.#pending.filter((p) => p.id !== handle);
  }

  /** Timers waiting to fire. */
  get pendingCount(): number {
    return this.#pending.length;
  }

  /** Move forward by `ms`, firing every timer due on the way, in time order, letting each one's work settle. */
  async advance(ms: number): Promise<void> {
    const targetMs = this.nowMs + ms;
    for (;;) {
      const due = this.#pending.filter((p) => p.atMs <= targetMs).sort((a, b) => a.atMs - b.atMs || a.id - b.id)[0];
      if (!due) break;
      this.#pending = this.#pending.filter((p) => p !== due);
      this.nowMs = Math.max(this.nowMs, due.atMs);
      due.fn();
      await settle();
    }
    this.nowMs = targetMs;
  }
}

/** Let promise chains started by the code under test run to their end (one macrotask turn). */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
