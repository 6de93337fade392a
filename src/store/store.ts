/**
 * The shared token store: what every pod of the fleet can see. The token manager runs one protocol on top of it
 * (read → lock → read again → fetch → write → publish); the memory store makes that protocol trivially
 * uncontended for a single pod, the Redis store makes it fleet-wide.
 */
import type { Token } from '../tokens/token.js';

export type StoreEvent =
  /** `token`: the token itself, when the event carried it (the Redis store does; then no read is needed). */
  | { kind: 'refreshed'; key: string; fingerprint: string; token?: Token | undefined }
  | { kind: 'invalidated'; key: string; fingerprint: string }
  /** The store came back after an outage (it may have lost its data). */
  | { kind: 'reconnected' };

export interface LockHandle {
  /** False once the lease was lost (renewal failed or it expired): the holder may still write, newer-wins protects it. */
  readonly held: boolean;
  release(): Promise<void>;
}

export type StoreHealth = 'ok' | 'degraded';

/**
 * A refresh that failed, shared so the rest of the fleet backs off too instead of each pod trying in turn
 * (a bad secret or an IdP outage must cost one call per backoff period, not one per pod).
 */
export interface SharedFailure {
  kind: 'rejected' | 'unavailable';
  /** Our own error text (sanitized vendor text at most; never a secret). */
  message: string;
  untilMs: number;
}

export interface StoreRead {
  token: Token | undefined;
  failure: SharedFailure | undefined;
}

export interface TokenStore {
  readonly kind: 'memory' | 'redis';
  /** The shared token for `key`; undefined on a miss or an unreadable value. Rejects with StoreUnavailableError. */
  get(key: string): Promise<Token | undefined>;
  /** The token and any recent shared failure, in one round trip. */
  read(key: string): Promise<StoreRead>;
  /** Record a failed refresh until `failure.untilMs`, and wake the pods waiting on it. */
  putFailure(key: string, failure: SharedFailure): Promise<void>;
  /** Write unless the store already holds a token issued later ("newer wins"); clears a shared failure; publishes `refreshed`. */
  put(key: string, token: Token): Promise<void>;
  /** Take the refresh lock for `key`, or undefined if another holder has it. The lease is renewed until release. */
  tryLock(key: string): Promise<LockHandle | undefined>;
  /**
   * `read`, and when the store holds neither a token nor a failure marker, `tryLock` in the same atomic step (one
   * round trip on Redis). `lock` is set only if it was taken; with it, nothing can have been written in between.
   */
  readOrLock(key: string): Promise<StoreRead & { lock: LockHandle | undefined }>;
  /**
   * Resolves when an event for `key` arrives or after `timeoutMs`, whichever is first: with the token when the event
   * carried one (a `refreshed` event), else undefined.
   */
  waitForEvent(key: string, timeoutMs: number): Promise<Token | undefined>;
  /** Delete the shared token only if it is still the one with `fingerprint`; publishes `invalidated`. */
  invalidate(key: string, fingerprint: string): Promise<boolean>;
  /** Events published by other pods (and this one). */
  onEvent(listener: (event: StoreEvent) => void): void;
  /** Whether events are being received; when false, the manager reconciles by polling. */
  eventsLive(): boolean;
  health(): StoreHealth;
  /** Resolves true once the store answers, or false after `timeoutMs` (it keeps connecting in the background). */
  whenReady(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

/** A store call that failed or missed its deadline: the caller falls back to a per-pod fetch. */
export class StoreUnavailableError extends Error {
  constructor(op: string, cause?: unknown) {
    super(`store ${op} failed`, cause === undefined ? undefined : { cause });
    this.name = 'StoreUnavailableError';
  }
}
