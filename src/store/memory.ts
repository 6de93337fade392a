import type { Stored } from '../core/errors.js';
import type { Token } from '../core/token.js';
import {
  STORED_VOID,
  stored,
  type GrantRead,
  type LockHandle,
  type ReadOrLock,
  type ReadOrLockOptions,
  type SharedFailure,
  type StoreEvent,
  type StoreRead,
  type TokenStore,
} from './store.js';

/**
 * The embedded store for one pod. The token keeper already single-flights per key, so the lock is never contended
 * here; it is still honoured so the protocol reads the same on both stores.
 */
export class MemoryStore implements TokenStore {
  readonly kind = 'memory' as const;
  readonly #tokens = new Map<string, Token>();
  readonly #locks = new Set<string>();
  readonly #failures = new Map<string, SharedFailure>();
  readonly #grants = new Map<string, string>();
  readonly #listeners: ((e: StoreEvent) => void)[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  async get(key: string): Promise<Stored<Token | undefined>> {
    return stored(this.#token(key));
  }

  async read(key: string): Promise<Stored<StoreRead>> {
    return stored(this.#read(key));
  }

  async getGrantState(key: string): Promise<Stored<GrantRead>> {
    return stored({ value: this.#grants.get(key), unreadable: false });
  }

  async putGrantState(key: string, value: string): Promise<Stored<void>> {
    this.#grants.set(key, value);
    return STORED_VOID;
  }

  async putFailure(key: string, failure: SharedFailure): Promise<Stored<void>> {
    this.#failures.set(key, failure);
    return STORED_VOID;
  }

  async put(key: string, token: Token): Promise<Stored<void>> {
    const current = this.#tokens.get(key);
    if (current && current.issuedAtMs > token.issuedAtMs) return STORED_VOID;
    this.#tokens.set(key, token);
    this.#failures.delete(key);
    this.#emit({ kind: 'refreshed', key, fingerprint: token.fingerprint });
    return STORED_VOID;
  }

  async readOrLock(key: string, opts: ReadOrLockOptions = {}): Promise<Stored<ReadOrLock>> {
    const read = this.#read(key);
    const atOrBeforeMs = opts.lockIfIssuedAtOrBeforeMs;
    const stale = !read.token || (atOrBeforeMs !== undefined && read.token.issuedAtMs <= atOrBeforeMs);
    const lock = read.failure || !stale ? undefined : this.#lock(key);
    return stored({ ...read, lock, lockHeld: this.#locks.has(key) });
  }

  async tryLock(key: string): Promise<Stored<LockHandle | undefined>> {
    return stored(this.#lock(key));
  }

  #token(key: string): Token | undefined {
    const token = this.#tokens.get(key);
    if (token && token.expiresAtMs <= this.now()) {
      this.#tokens.delete(key);
      return undefined;
    }
    return token;
  }

  #read(key: string): StoreRead {
    const failure = this.#failures.get(key);
    if (failure && failure.untilMs <= this.now()) this.#failures.delete(key);
    return { token: this.#token(key), failure: this.#failures.get(key) };
  }

  #lock(key: string): LockHandle | undefined {
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
        return STORED_VOID;
      },
    };
  }

  async waitForEvent(_key: string, timeoutMs: number): Promise<Token | undefined> {
    await new Promise((resolve) => setTimeout(resolve, timeoutMs).unref());
    return undefined;
  }

  async invalidate(key: string, fingerprint: string): Promise<Stored<boolean>> {
    if (this.#tokens.get(key)?.fingerprint !== fingerprint) return stored(false);
    this.#tokens.delete(key);
    this.#emit({ kind: 'invalidated', key, fingerprint });
    return stored(true);
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
