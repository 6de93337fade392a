/**
 * Waiting without pub/sub: the pods waiting on one key share one poll of the store every `intervalMs`, until the
 * check says to wake them (with the new token, or without one so they read the store and decide) or each one's own
 * timeout ends its wait.
 */
import type { Token } from '../core/token.js';

export type PollVerdict = { wake: false } | { wake: true; token: Token | undefined };

interface Poller {
  readonly waiters: Set<(token?: Token) => void>;
  /** The token fingerprint last read for this key when the wait began: the check wakes on another one. */
  readonly seen: string | undefined;
  timer: NodeJS.Timeout | undefined;
}

export class KeyPolls {
  readonly #pollers = new Map<string, Poller>();

  constructor(
    private readonly intervalMs: number,
    private readonly check: (key: string, seen: string | undefined) => Promise<PollVerdict>,
  ) {}

  wait(key: string, seen: string | undefined, timeoutMs: number): Promise<Token | undefined> {
    return new Promise((resolve) => {
      let poller = this.#pollers.get(key);
      if (!poller) {
        poller = { waiters: new Set(), seen, timer: undefined };
        this.#pollers.set(key, poller);
        this.#schedule(key, poller);
      }
      const p = poller;
      const done = (token?: Token) => {
        clearTimeout(timer);
        p.waiters.delete(done);
        if (p.waiters.size === 0 && this.#pollers.get(key) === p) this.#stop(key, p);
        resolve(token);
      };
      const timer = setTimeout(() => done(), timeoutMs);
      timer.unref();
      p.waiters.add(done);
    });
  }

  /** Wake every waiter (without a token) and stop polling. */
  close(): void {
    for (const [key, p] of this.#pollers) {
      this.#stop(key, p);
      for (const w of [...p.waiters]) w();
    }
  }

  #schedule(key: string, p: Poller): void {
    p.timer = setTimeout(() => void this.#poll(key, p), this.intervalMs);
    p.timer.unref();
  }

  #stop(key: string, p: Poller): void {
    clearTimeout(p.timer);
    this.#pollers.delete(key);
  }

  async #poll(key: string, p: Poller): Promise<void> {
    const verdict = await this.check(key, p.seen).catch((): PollVerdict => ({ wake: true, token: undefined }));
    if (this.#pollers.get(key) !== p) return;
    if (!verdict.wake) return this.#schedule(key, p);
    this.#stop(key, p);
    for (const w of [...p.waiters]) w(verdict.token);
  }
}
