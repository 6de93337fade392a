/**
 * The fleet protocol for one token, start to end: read (and, on a cold start, lock in the same step) → take a shared
 * token, or back off with another pod's failure → hold the lock, read again, fetch, share, release → or wait for the
 * holder's result. Every store answer is a value; an outage ends the protocol with `alone` and the caller fetches
 * for this pod only (correctness never depends on the store). What counts as good enough is the caller's policy.
 */
import type { StoreOutage, TokenEndpointError } from '../core/errors.js';
import type { Token } from '../core/token.js';
import type { LockHandle, SharedFailure, StoreRead, TokenStore } from '../store/store.js';

export type Fetched =
  | { readonly ok: true; readonly token: Token; readonly durationMs: number }
  | { readonly ok: false; readonly error: TokenEndpointError; readonly failure: SharedFailure };

export interface AcquireDeps {
  readonly store: TokenStore;
  readonly key: string;
  readonly nowMs: () => number;
  /** Longest a pod waits for another pod's refresh before fetching itself. */
  readonly lockWaitTimeoutMs: number;
  /** Re-read interval while waiting, in case an event is lost. */
  readonly pollIntervalMs: number;
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
  // On a cold start (nothing shared, no failure) this read also takes the lock: one round trip, not three.
  const first = await d.store.readOrLock(d.key);
  if (!first.ok) return { via: 'alone', why: first.outage };
  if (d.accepts(first.value.token)) {
    d.lookedUp(true);
    return { via: 'store', token: first.value.token, waitedMs: undefined };
  }
  d.lookedUp(false);
  const settled = settle(d, first.value);
  if (settled) return settled;
  let lock = first.value.lock;
  let read: 'atomic' | 'reread' = 'atomic';
  const deadlineMs = startedMs + d.lockWaitTimeoutMs;
  for (;;) {
    if (!lock) {
      const taken = await d.store.tryLock(d.key);
      if (!taken.ok) return { via: 'alone', why: taken.outage };
      lock = taken.value;
      read = 'reread';
    }
    if (lock) return holdLock(d, lock, read);
    // Another pod holds the lock: wait for its result (woken by its event, or polled).
    const remainingMs = deadlineMs - d.nowMs();
    if (remainingMs <= 0) return { via: 'alone', why: 'lock_wait_timeout' };
    const carried = await d.store.waitForEvent(d.key, Math.min(remainingMs, d.pollIntervalMs));
    if (d.accepts(carried)) return { via: 'store', token: carried, waitedMs: d.nowMs() - startedMs };
    const landed = await d.store.read(d.key);
    if (!landed.ok) return { via: 'alone', why: landed.outage };
    if (d.accepts(landed.value.token)) return { via: 'store', token: landed.value.token, waitedMs: d.nowMs() - startedMs };
    const after = settle(d, landed.value);
    if (after) return after;
  }
}

/** What a read that gave no usable token still decides: another pod's failure, or a value we may not overwrite. */
function settle(d: AcquireDeps, read: StoreRead): Acquired | undefined {
  if (d.backsOff(read.failure)) return { via: 'backoff', failure: read.failure };
  // Sealed under a key this pod lacks (a key rollout): fetch for ourselves and leave the fleet's token alone.
  if (read.unreadable === 'foreign') return { via: 'alone', why: 'foreign_key' };
  return undefined;
}

async function holdLock(d: AcquireDeps, lock: LockHandle, read: 'atomic' | 'reread'): Promise<Acquired> {
  // Read again under the lock: the previous holder may have written between our read and our lock (not needed when
  // the lock came with the read itself).
  if (read === 'reread') {
    const again = await d.store.read(d.key);
    const early: Acquired | undefined = !again.ok
      ? { via: 'alone', why: again.outage }
      : d.accepts(again.value.token)
        ? { via: 'store', token: again.value.token, waitedMs: undefined }
        : settle(d, again.value);
    if (early) {
      await release(d, lock);
      return early;
    }
  }
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
