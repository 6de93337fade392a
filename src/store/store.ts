/**
 * The shared token store: what every pod of the fleet can see. tokens/acquire.ts runs one protocol on top of it
 * (read-or-lock → fetch → write → release, waiters woken by events); the memory store makes that protocol trivially
 * uncontended for a single pod, the Redis store makes it fleet-wide. Every call answers with a value: a failed or
 * late call is a `StoreOutage`, never a thrown error, so the protocol can say what each means in one place.
 */
import type { Stored } from '../core/errors.js';
import type { Token } from '../core/token.js';

export type StoreEvent =
  /** `token`: the token itself, when the event carried it (the Redis store does; then no read is needed). */
  | { kind: 'refreshed'; key: string; fingerprint: string; token?: Token | undefined }
  | { kind: 'invalidated'; key: string; fingerprint: string }
  /** The store came back after an outage (it may have lost its data). */
  | { kind: 'reconnected' };

export interface LockHandle {
  /** False once the lease was lost (renewal failed or it expired): the holder may still write, newer-wins protects it. */
  readonly held: boolean;
  release(): Promise<Stored<void>>;
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
  /** Undefined on a miss, and for a value this pod cannot read (then `unreadable` says why). */
  token: Token | undefined;
  failure: SharedFailure | undefined;
  /**
   * A value is there but this pod cannot read it: sealed with a key id it does not have (`foreign`, another pod's
   * newer key during a rollout: left alone, never overwritten) or damaged (`bad`: already cleared).
   */
  unreadable?: 'foreign' | 'bad' | undefined;
}

export interface CallOptions {
  /** Give up after this long (the refresh's remaining store time); default: the store's per-call deadline. */
  timeoutMs?: number | undefined;
}

export interface ReadOrLockOptions extends CallOptions {
  /**
   * Also take the lock when the shared token was issued at or before this (a refresh of that very token); without
   * it, the lock is taken only when there is no token.
   */
  lockIfIssuedAtOrBeforeMs?: number | undefined;
}

export interface ReadOrLock extends StoreRead {
  /** Set only if this call took the lock; with it, nothing can have been written in between. */
  lock: LockHandle | undefined;
  /** Whether the lock is held (by us or another pod) after this call. */
  lockHeld: boolean;
}

/** Grant state as read: `unreadable` when a value is there that this pod cannot open (another key, or plaintext with encryption on). */
export interface GrantRead {
  value: string | undefined;
  unreadable: boolean;
}

export interface TokenStore {
  readonly kind: 'memory' | 'redis' | 'memcached';
  /** The shared token for `key`; undefined on a miss or an unreadable value. */
  get(key: string): Promise<Stored<Token | undefined>>;
  /** The token and any recent shared failure, in one round trip. */
  read(key: string, opts?: CallOptions): Promise<Stored<StoreRead>>;
  /** Record a failed refresh until `failure.untilMs`, and wake the pods waiting on it. */
  putFailure(key: string, failure: SharedFailure): Promise<Stored<void>>;
  /** Write unless the store already holds a token issued later ("newer wins"); clears a shared failure; publishes `refreshed`. */
  put(key: string, token: Token): Promise<Stored<void>>;
  /** Take the refresh lock for `key`, or undefined if another holder has it. The lease is renewed until release. */
  tryLock(key: string, opts?: CallOptions): Promise<Stored<LockHandle | undefined>>;
  /**
   * `read`, and when there is no failure marker and no token (or only the one being refreshed, see the option), take
   * the lock in the same atomic step: one round trip on Redis, and no read again under the lock.
   */
  readOrLock(key: string, opts?: ReadOrLockOptions): Promise<Stored<ReadOrLock>>;
  /**
   * Resolves when an event for `key` arrives or after `timeoutMs`, whichever is first: with the token when the event
   * carried one (a `refreshed` event), else undefined.
   */
  waitForEvent(key: string, timeoutMs: number): Promise<Token | undefined>;
  /** Delete the shared token only if it is still the one with `fingerprint`; publishes `invalidated`. */
  invalidate(key: string, fingerprint: string, opts?: CallOptions): Promise<Stored<boolean>>;
  /**
   * Grant state the fleet shares (the newest refresh token of a rotating grant), sealed like a token. Read and written
   * by the lock holder only; undefined when absent or unreadable here.
   */
  getGrantState(key: string): Promise<Stored<GrantRead>>;
  putGrantState(key: string, value: string, ttlMs: number): Promise<Stored<void>>;
  /** Events published by other pods (and this one). */
  onEvent(listener: (event: StoreEvent) => void): void;
  /** Whether events are being received; when false, fleet sync reconciles by polling. */
  eventsLive(): boolean;
  health(): StoreHealth;
  /** Resolves true once the store answers, or false after `timeoutMs` (it keeps connecting in the background). */
  whenReady(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

export const stored = <T>(value: T): Stored<T> => ({ ok: true, value });
export const STORED_VOID: Stored<void> = { ok: true, value: undefined };
