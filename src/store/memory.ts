import type { Token } from '../tokens/token.js';
import type { LockHandle, SharedFailure, StoreEvent, StoreRead, TokenStore } from './store.js';

/**
 * The embedded store for one pod. The manager already single-flights per key, so the lock is never contended
 * here; it is still honoured so the protocol reads the same on both stores.
 */
export class MemoryStore implements TokenStore {
  readonly kind = 'memory' as const;
  readonly #tokens = new Map<string, Token>();
  readonly #locks = new Set<string>();
  readonly #failures = new Map<string, SharedFailure>();
  readonly #listeners: ((e: StoreEvent) => void)[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  async get(key: string): Promise<Token | undefined> {
    const token = this.#tokens.get(key);
    if (token && token.expiresAtMs <= this.now()) {
      this.#tokens.delete(key);
      return undefined;
    }
    return token;
  }

  async read(key: string): Promise<StoreRead> {
    const failure = this.#failures.get(key);
    if (failure && failure.untilMs <= this.now()) this.#failures.delete(key);
    return { token: await this.get(key), failure: this.#failures.get(key) };
  }

  async putFailure(key: string, failure: SharedFailure): Promise<void> {
    this.#failures.set(key, failure);
  }

  async put(key: string, token: Token): Promise<void> {
    const current = this.#tokens.get(key);
    if (current && current.issuedAtMs > token.issuedAtMs) return;
    this.#tokens.set(key, token);
    this.#failures.delete(key);
    this.#emit({ kind: 'refreshed', key, fingerprint: token.fingerprint });
  }

  async readOrLock(key: string): Promise<StoreRead & { lock: LockHandle | undefined }> {
    const read = await this.read(key);
    return { ...read, lock: read.token || read.failure ? undefined : await this.tryLock(key) };
  }

  async tryLock(key: string): Promise<LockHandle | undefined> {
    if (this.#locks.has(key)) return undefined;
    this.#locks.add(key);
    let held = true;
    return {
      get held() {
        return held;
      },
      release: async () => {
        if (held) this.#locks.delete(key);
        held = false;
      },
    };
  }

  async waitForEvent(_key: string, timeoutMs: number): Promise<Token | undefined> {
    await new Promise((resolve) => setTimeout(resolve, timeoutMs).unref());
    return undefined;
  }

  async invalidate(key: string, fingerprint: string): Promise<boolean> {
    if (this.#tokens.get(key)?.fingerprint !== fingerprint) return false;
    this.#tokens.delete(key);
    this.#emit({ kind: 'invalidated', key, fingerprint });
    return true;
  }

  onEvent(listener: (e: StoreEvent) => void): void {
    this.#listeners.push(listener);
  }

  eventsLive(): boolean {
    return true;
  }

  health(): 'ok' {
    return 'ok';
  }

  async whenReady(): Promise<boolean> {
    return true;
  }

  async close(): Promise<void> {
    this.#tokens.clear();
  }

  #emit(event: StoreEvent): void {
    for (const l of this.#listeners) l(event);
  }
}
