/**
 * The refresh lock on memcached: `add` with a TTL (of several pods adding one key, one succeeds), renewed with gets →
 * compare → cas of the same value and a fresh TTL, released with gets → compare → cas with exptime -1 (a conditional
 * delete). The value is a random owner id, so a holder whose lease ended can neither renew nor delete the next
 * holder's lock.
 */
import type { Stored } from '../core/errors.js';
import type { McServer } from './memcached-client.js';
import { STORED_VOID, type LockHandle } from './store.js';

/** A release whose cas keeps losing to our own renewal in flight gives up after this many reads (the lease ends it). */
const RELEASE_ATTEMPTS = 3;

/** Delete the lock only while it is still ours; true when deleted. */
export async function releaseLock(s: McServer, lockKey: string, owner: string): Promise<boolean> {
  for (let attempt = 0; attempt < RELEASE_ATTEMPTS; attempt++) {
    const current = (await s.gets([lockKey])).get(lockKey);
    if (current?.value !== owner) return false;
    // EXISTS: changed since our read but still ours, i.e. our own renewal came in between. Read again.
    if ((await s.casDelete(lockKey, current.cas)) !== 'EXISTS') return true;
  }
  return false;
}

/** Extend the lease only while we still own it; false once it is gone or another pod's. */
export async function renewLock(s: McServer, lockKey: string, owner: string, ttlS: number): Promise<boolean> {
  const current = (await s.gets([lockKey])).get(lockKey);
  return current?.value === owner && (await s.cas(lockKey, owner, ttlS, current.cas)) === 'STORED';
}

export interface HeldLockSpec {
  server: McServer;
  lockKey: string;
  owner: string;
  leaseMs: number;
  ttlS: number;
  /** The release, through the store's call wrapper (deadline, breaker, outage values). */
  release(): Promise<Stored<boolean>>;
}

/** The handle of a lock we just took: renewed until released, released only while it is still ours. */
export function heldLock(spec: HeldLockSpec): LockHandle {
  const { server, lockKey, owner, ttlS } = spec;
  let held = true;
  let renewing = false;
  // Renew well before the lease ends, so a slow token endpoint never costs us the lock mid-fetch.
  const renew = setInterval(() => {
    if (renewing || !server.ready) return; // a missed renewal is retried at the next tick; the lease covers two more
    renewing = true;
    renewLock(server, lockKey, owner, ttlS).then(
      (renewed) => {
        renewing = false;
        if (renewed || !held) return;
        held = false;
        clearInterval(renew);
      },
      () => (renewing = false),
    );
  }, Math.max(50, Math.floor(spec.leaseMs / 3)));
  renew.unref();
  return {
    get held() {
      return held;
    },
    release: async () => {
      clearInterval(renew);
      if (!held) return STORED_VOID;
      held = false;
      const reply = await spec.release();
      return reply.ok ? STORED_VOID : reply;
    },
  };
}
