/**
 * The fleet protocol for one token, start to end: read, and take the lock in the same step when there is nothing to
 * take → take a shared token, or back off with another pod's failure → holding the lock: fetch, share, release → or
 * wait for the holder's result (its event, or the next read). Every store answer is a value. Until it is known who
 * refreshes (us, another pod, or nobody: a token to take), the store calls share one time budget
 * (`coordinationTimeoutMs`), so a late store is waited for, a bounded while; then the wait for a live holder is bounded
 * by `lockWaitTimeoutMs`, each re-read by the store's own per-call deadline. An outage, or a budget spent, ends the
 * protocol with `alone` and the caller fetches for this pod only (correctness never depends on the store). What counts
 * as good enough is the caller's policy.
 */
import type { StoreOutage, Stored, TokenEndpointError } from '../core/errors.js';
import type { Token } from '../core/token.js';
import type { LockHandle, SharedFailure, StoreRead, TokenStore } from '../store/store.js';

export type Fetched =
  | { readonly ok: true; readonly token: Token; readonly durationMs: number }
  | { readonly ok: false; readonly error: TokenEndpointError; readonly failure: SharedFailure };

export interface AcquireDeps {
  readonly store: TokenStore;
  readonly key: string;
  readonly nowMs: () => number;
  /** Store time the first round may take (its read-or-lock, and a lock and re-read when needed) before going alone. */
  readonly coordinationTimeoutMs: number;
  /** Longest a pod waits for another pod's refresh before fetching itself. */
  readonly lockWaitTimeoutMs: number;
  /** Re-read interval while waiting, in case an event is lost. */
  readonly pollIntervalMs: number;
  /** A shared token issued at or before this is the one being refreshed: lock instead (undefined: only when none). */
  readonly staleAtOrBeforeMs: number | undefined;
  accepts(token: Token | undefined): token is Token;
  backsOff(failure: SharedFailure | undefined): failure is SharedFailure;
  fetch(): Promise<Fetched>;
  /** The first read's verdict (for the cache-lookup metric). */
  lookedUp(hit: boolean): void;
  /** A store call that failed on the way (writes and releases after the token is in hand). */
  outage(outage: StoreOutage): void;
}

export type Acquired =
  | { readonly via: 'store'; readonly token: Token; readonly waitedMs: number | undefined }
  /** `shared` settles once the token is written and the lock released (true when the write worked). */
  | { readonly via: 'fetched'; readonly token: Token; readonly durationMs: number; readonly shared: Promise<boolean> }
  | { readonly via: 'backoff'; readonly failure: SharedFailure }
  | { readonly via: 'failed'; readonly error: TokenEndpointError }
  /** The fleet cannot coordinate this one: fetch for this pod. */
  | { readonly via: 'alone'; readonly why: StoreOutage | 'lock_wait_timeout' | 'foreign_key' };

export async function acquire(d: AcquireDeps): Promise<Acquired> {
  const startedMs = d.nowMs();
  const budget = new StoreBudget(d.nowMs, d.coordinationTimeoutMs);
  const waitUntilMs = startedMs + d.lockWaitTimeoutMs;
  for (let round = 0; ; round++) {
    // The first round finds out who refreshes, within the budget; later rounds re-check while a holder works.
    const spend = round === 0 ? budget.spend : unbudgeted;
    // One round trip: the token, the failure marker, and the lock when there is nothing (newer) to take.
    const read = await spend('get', (timeoutMs) => d.store.readOrLock(d.key, { timeoutMs, lockIfIssuedAtOrBeforeMs: d.staleAtOrBeforeMs }));
    if (!read.ok) return { via: 'alone', why: read.outage };
    const { token, lock } = read.value;
    const hit = d.accepts(token);
    if (round === 0) d.lookedUp(hit);
    const early: Acquired | undefined = hit ? { via: 'store', token, waitedMs: round === 0 ? undefined : d.nowMs() - startedMs } : settle(d, read.value);
    if (early) {
      if (lock) await release(d, lock);
      return early;
    }
    if (lock) return holdLock(d, lock);
    if (!read.value.lockHeld) {
      // Nobody refreshes it, yet the token there is no use to us (too close to expiry, refused): lock it ourselves,
      // and read again under the lock (a holder may have written between our read and our lock).
      const taken = await spend('lock', (timeoutMs) => d.store.tryLock(d.key, { timeoutMs }));
      if (!taken.ok) return { via: 'alone', why: taken.outage };
      if (taken.value) return rereadThenHold(d, spend, taken.value);
    }
    // Another pod holds the lock: wait for its result (woken by its event, or the next read).
    const remainingMs = waitUntilMs - d.nowMs();
    if (remainingMs <= 0) return { via: 'alone', why: 'lock_wait_timeout' };
    const carried = await d.store.waitForEvent(d.key, Math.min(remainingMs, d.pollIntervalMs));
    if (d.accepts(carried)) return { via: 'store', token: carried, waitedMs: d.nowMs() - startedMs };
  }
}

/** A store call, given the time it may take (undefined: the store's own per-call deadline). */
type Spend = <T>(op: string, call: (timeoutMs: number | undefined) => Promise<Stored<T>>) => Promise<Stored<T>>;

const unbudgeted: Spend = (_op, call) => call(undefined);

/** Store time shared by several calls: each gets what is left, and none starts once it is spent. */
class StoreBudget {
  #leftMs: number;

  constructor(
    private readonly nowMs: () => number,
    totalMs: number,
  ) {
    this.#leftMs = totalMs;
  }

  readonly spend: Spend = async (op, call) => {
    if (this.#leftMs <= 0) return { ok: false, outage: { op, reason: 'timeout', message: 'the coordination deadline passed' } };
    const startedMs = this.nowMs();
    try {
      return await call(this.#leftMs);
    } finally {
      this.#leftMs -= this.nowMs() - startedMs;
    }
  };
}

/** What a read that gave no usable token still decides: another pod's failure, or a value we may not overwrite. */
function settle(d: AcquireDeps, read: StoreRead): Acquired | undefined {
  if (d.backsOff(read.failure)) return { via: 'backoff', failure: read.failure };
  // Sealed under a key this pod lacks (a key rollout): fetch for ourselves and leave the fleet's token alone.
  if (read.unreadable === 'foreign') return { via: 'alone', why: 'foreign_key' };
  return undefined;
}

async function rereadThenHold(d: AcquireDeps, spend: Spend, lock: LockHandle): Promise<Acquired> {
  const again = await spend('get', (timeoutMs) => d.store.read(d.key, { timeoutMs }));
  const early: Acquired | undefined = !again.ok
    ? { via: 'alone', why: again.outage }
    : d.accepts(again.value.token)
      ? { via: 'store', token: again.value.token, waitedMs: undefined }
      : settle(d, again.value);
  if (!early) return holdLock(d, lock);
  await release(d, lock);
  return early;
}

async function holdLock(d: AcquireDeps, lock: LockHandle): Promise<Acquired> {
  const fetched = await d.fetch();
  if (!fetched.ok) {
    // Tell the fleet, so the other pods back off too instead of each trying in turn.
    const told = await d.store.putFailure(d.key, fetched.failure);
    if (!told.ok) d.outage(told.outage);
    await release(d, lock);
    return { via: 'failed', error: fetched.error };
  }
  // Share the token, then let go of the lock, in that order (a pod that takes the lock next must find the token),
  // without keeping this pod's waiting requests behind those two round trips.
  const shared = d.store.put(d.key, fetched.token).then(async (put) => {
    if (!put.ok) d.outage(put.outage);
    await release(d, lock);
    return put.ok;
  });
  return { via: 'fetched', token: fetched.token, durationMs: fetched.durationMs, shared };
}

async function release(d: AcquireDeps, lock: LockHandle): Promise<void> {
  const released = await lock.release();
  if (!released.ok) d.outage(released.outage);
}
