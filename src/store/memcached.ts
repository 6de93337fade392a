/**
 * The shared store on memcached: one or more servers, each credential's keys on one server by consistent hashing
 * (memcached-ring.ts), values encoded and sealed exactly as on Redis (codec.ts, crypto.ts).
 *
 * Client: our own (memcached-client.ts, the text protocol over node:net), because no npm client does both
 * compare-and-swap and consistent hashing dependably. memjs 1.3.2 has no gets/cas ("TODO: support version (CAS)")
 * and picks a server by hash % n, failing over to the next one (two pods could then take the lock on two servers);
 * memcache-client 1.0.5 has cas but sends each command to a random server; memcached 2.2.2 has a hash ring and cas
 * but is unmaintained since 2018, has no per-command deadline (its open issue #195: calls hang once a server went
 * down) and by default marks a failed server dead for 5 hours.
 *
 * Without scripts, each step is a compare-and-swap: "newer wins" is gets → cas (or add when absent), retried when
 * another writer came in between; invalidation and lock release are gets → compare → cas with an exptime of -1 (a
 * conditional delete); the lock is `add` with a TTL. Deadlines, the breaker and outages are as on Redis (redis.ts),
 * per server: a dead or frozen server costs only the credentials that hash to it. Memcached has no pub/sub: a waiter
 * polls every `pollInterval`, and other pods see an invalidation at their next fleet-sync reconcile (at most
 * RECONCILE_INTERVAL_MS, 2 s, plus one read). TTLs are whole seconds on the server's clock (see ttlSeconds).
 */
import { randomBytes } from 'node:crypto';
import type { Stored } from '../core/errors.js';
import type { Logger } from '../log.js';
import type { MemcachedStoreConfig } from '../config/types.js';
import type { Token } from '../core/token.js';
import { Keyring } from './crypto.js';
import { decodeSecret, decodeToken, encodeSecret, encodeToken } from './codec.js';
import type { McEntry, McServer } from './memcached-client.js';
import { heldLock, releaseLock } from './memcached-lock.js';
import { createNode, type Node } from './memcached-nodes.js';
import { KeyPolls, type PollVerdict } from './memcached-poll.js';
import { HashRing } from './memcached-ring.js';
import { encodeFailure, lockTtlSeconds, outageOf, outerOf, parseFailure, ttlSeconds } from './memcached-values.js';
import type { RedisStoreObserver } from './redis.js';
import {
  STORED_VOID,
  stored,
  type CallOptions,
  type GrantRead,
  type LockHandle,
  type ReadOrLock,
  type ReadOrLockOptions,
  type SharedFailure,
  type StoreEvent,
  type StoreHealth,
  type StoreRead,
  type TokenStore,
} from './store.js';

export type MemcachedStoreObserver = RedisStoreObserver;

/** After a call that used its whole deadline, skip that server this long (a frozen server must not tax every request). */
const BREAKER_OPEN_MS = 1_000;
const LATE = Symbol('late');
/**
 * A failed cas means another writer got in, so every try is progress for someone; a newer token must not give up
 * after a few, or the older one that beat it would stand. The deadline ends it too.
 */
const PUT_ATTEMPTS = 32;

/** Set once the store gave up on a call, for the steps still running in it (a lock taken too late is dropped). */
interface Call {
  late: boolean;
}

interface Keys {
  token: string;
  lock: string;
  failure: string;
  grant: string;
}

export class MemcachedStore implements TokenStore {
  readonly kind = 'memcached' as const;
  readonly #nodes: Node[];
  readonly #ring: HashRing<Node>;
  readonly #prefix: string;
  readonly #keyring: Keyring | undefined;
  readonly #lockLeaseMs: number;
  readonly #lockTtlS: number;
  readonly #commandTimeoutMs: number;
  readonly #log: Logger;
  readonly #observer: MemcachedStoreObserver;
  readonly #listeners: ((e: StoreEvent) => void)[] = [];
  readonly #polls: KeyPolls;
  readonly #seen = new Map<string, string | undefined>();
  readonly #readyWaiters = new Set<() => void>();
  #closed = false;

  private constructor(config: MemcachedStoreConfig, log: Logger, observer: MemcachedStoreObserver) {
    this.#prefix = config.keyPrefix;
    this.#keyring = config.encryptionKeys.length > 0 ? new Keyring(config.encryptionKeys) : undefined;
    this.#lockLeaseMs = config.lockLeaseMs;
    this.#lockTtlS = lockTtlSeconds(config.lockLeaseMs);
    this.#commandTimeoutMs = config.commandTimeoutMs;
    this.#log = log;
    this.#observer = observer;
    this.#nodes = config.servers.map((s) =>
      createNode(s.host, s.port, {
        log,
        commandTimeoutMs: config.commandTimeoutMs,
        closed: () => this.#closed,
        up: (_node, reconnected) => {
          this.#observer.up?.(this.#allUp());
          // Back after an outage, perhaps empty (memcached keeps nothing across a restart): the pods re-share.
          if (reconnected) this.#emit({ kind: 'reconnected' });
          for (const w of [...this.#readyWaiters]) w();
        },
        down: () => this.#observer.up?.(false),
      }),
    );
    this.#polls = new KeyPolls(config.pollIntervalMs, (key, seen) => this.#check(key, seen));
    this.#ring = new HashRing(this.#nodes.map((node) => ({ name: node.server.address, node })));
  }

  /** Connects in the background: a pod starts and serves while memcached is down (it fetches for itself meanwhile). */
  static async connect(config: MemcachedStoreConfig, log: Logger, observer: MemcachedStoreObserver = {}): Promise<MemcachedStore> {
    return new MemcachedStore(config, log, observer);
  }

  /** Same scheme as Redis: prefix, the credential's hash in braces, the kind. Never a token or a secret. */
  keys(key: string): Keys {
    const base = `${this.#prefix}{${key}}`;
    return { token: `${base}:token`, lock: `${base}:lock`, failure: `${base}:failure`, grant: `${base}:grant` };
  }

  /** The server holding `key`'s values (for tests and logs). */
  serverOf(key: string): string {
    return this.#ring.pick(key).server.address;
  }

  async get(key: string): Promise<Stored<Token | undefined>> {
    const k = this.keys(key);
    const reply = await this.#call('get', key, (s) => s.gets([k.token]));
    if (!reply.ok) return reply;
    const read = await this.#decode(key, k.token, reply.value.get(k.token));
    return stored(read.token);
  }

  async read(key: string, opts: CallOptions = {}): Promise<Stored<StoreRead>> {
    const k = this.keys(key);
    const reply = await this.#call('get', key, (s) => s.gets([k.token, k.failure]), opts.timeoutMs);
    if (!reply.ok) return reply;
    return stored({ ...(await this.#decode(key, k.token, reply.value.get(k.token))), failure: parseFailure(reply.value.get(k.failure)?.value) });
  }

  async getGrantState(key: string): Promise<Stored<GrantRead>> {
    const { grant } = this.keys(key);
    const reply = await this.#call('get_grant', key, (s) => s.gets([grant]));
    if (!reply.ok) return reply;
    const text = reply.value.get(grant)?.value;
    const value = text === undefined ? undefined : decodeSecret(grant, text, this.#keyring);
    return stored({ value, unreadable: text !== undefined && value === undefined });
  }

  async putGrantState(key: string, value: string, ttlMs: number): Promise<Stored<void>> {
    const { grant } = this.keys(key);
    const sealed = encodeSecret(grant, value, this.#keyring);
    const reply = await this.#call('put_grant', key, (s) => s.set(grant, sealed, ttlSeconds(ttlMs)));
    return reply.ok ? STORED_VOID : reply;
  }

  async putFailure(key: string, failure: SharedFailure): Promise<Stored<void>> {
    const ttlMs = Math.floor(failure.untilMs - Date.now());
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) return STORED_VOID;
    const value = encodeFailure(failure);
    const reply = await this.#call('put_failure', key, (s) => s.set(this.keys(key).failure, value, ttlSeconds(ttlMs)));
    return reply.ok ? STORED_VOID : reply;
  }

  async put(key: string, token: Token): Promise<Stored<void>> {
    const k = this.keys(key);
    const ttlMs = Math.floor(token.expiresAtMs - Date.now());
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) return STORED_VOID;
    const value = encodeToken(k.token, token, this.#keyring);
    const reply = await this.#call('put', key, async (s, call) => {
      for (let attempt = 0; attempt < PUT_ATTEMPTS && !call.late; attempt++) {
        const current = (await s.gets([k.token])).get(k.token);
        // An unreadable value is overwritten; a readable one wins only if it was issued later than ours.
        const iat = current ? outerOf(current.value)?.iat : undefined;
        if (iat !== undefined && iat > token.issuedAtMs) return false;
        const written = current ? (await s.cas(k.token, value, ttlSeconds(ttlMs), current.cas)) === 'STORED' : await s.add(k.token, value, ttlSeconds(ttlMs));
        if (written) {
          await s.delete(k.failure);
          return true;
        }
      }
      return false;
    });
    if (!reply.ok) return reply;
    if (reply.value) this.#emit({ kind: 'refreshed', key, fingerprint: token.fingerprint, token });
    return STORED_VOID;
  }

  async tryLock(key: string, opts: CallOptions = {}): Promise<Stored<LockHandle | undefined>> {
    const { lock } = this.keys(key);
    const owner = randomBytes(16).toString('hex');
    const reply = await this.#call('lock', key, async (s, call) => this.#add(s, call, lock, owner), opts.timeoutMs);
    if (!reply.ok) return reply;
    return stored(reply.value ? this.#heldLock(key, lock, owner) : undefined);
  }

  /**
   * One round trip when there is a token to take (or a failure, or a holder); else `add` the lock, then read again
   * behind it: whatever a holder wrote before our lock is seen, so "nothing written in between" holds as on Redis.
   */
  async readOrLock(key: string, opts: ReadOrLockOptions = {}): Promise<Stored<ReadOrLock>> {
    const k = this.keys(key);
    const owner = randomBytes(16).toString('hex');
    const atOrBeforeMs = opts.lockIfIssuedAtOrBeforeMs ?? -1;
    const reply = await this.#call(
      'get',
      key,
      async (s, call) => {
        const first = await s.gets([k.token, k.failure, k.lock]);
        const token = first.get(k.token);
        const iat = token ? outerOf(token.value)?.iat : undefined;
        // An unreadable value counts as stale when refreshing; a readable one only if not newer than ours.
        const stale = !token || (atOrBeforeMs >= 0 && !(iat !== undefined && iat > atOrBeforeMs));
        if (first.has(k.failure) || !stale || first.has(k.lock)) return { read: first, locked: false, held: first.has(k.lock) };
        if (!(await this.#add(s, call, k.lock, owner))) return { read: first, locked: false, held: true };
        return { read: await s.gets([k.token, k.failure]), locked: true, held: true };
      },
      opts.timeoutMs,
    );
    if (!reply.ok) return reply;
    const { read, locked, held } = reply.value;
    return stored({
      ...(await this.#decode(key, k.token, read.get(k.token))),
      failure: parseFailure(read.get(k.failure)?.value),
      lock: locked ? this.#heldLock(key, k.lock, owner) : undefined,
      lockHeld: held,
    });
  }

  /** Polls (no pub/sub): resolves with the token once it changed, early without one when the holder is done or gone. */
  waitForEvent(key: string, timeoutMs: number): Promise<Token | undefined> {
    return this.#polls.wait(key, this.#seen.get(key), timeoutMs);
  }

  async invalidate(key: string, fingerprint: string, opts: CallOptions = {}): Promise<Stored<boolean>> {
    const { token } = this.keys(key);
    const reply = await this.#call(
      'invalidate',
      key,
      async (s) => {
        const current = (await s.gets([token])).get(token);
        if (!current || outerOf(current.value)?.fp !== fingerprint) return false;
        return (await s.casDelete(token, current.cas)) === 'STORED';
      },
      opts.timeoutMs,
    );
    if (!reply.ok) return reply;
    if (reply.value) this.#emit({ kind: 'invalidated', key, fingerprint });
    return stored(reply.value);
  }

  onEvent(listener: (e: StoreEvent) => void): void {
    this.#listeners.push(listener);
  }

  /** No pub/sub in memcached: fleet sync reconciles by polling. */
  eventsLive(): boolean {
    return false;
  }

  health(): StoreHealth {
    const now = Date.now();
    return this.#nodes.every((n) => n.server.ready && now >= n.breakerOpenUntilMs) ? 'ok' : 'degraded';
  }

  /** True once every server answered (they keep connecting in the background after a false). */
  async whenReady(timeoutMs: number): Promise<boolean> {
    if (this.#allUp()) return true;
    return new Promise((resolve) => {
      const done = (ready: boolean) => {
        clearTimeout(timer);
        this.#readyWaiters.delete(onUp);
        resolve(ready);
      };
      const onUp = () => this.#allUp() && done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      timer.unref();
      this.#readyWaiters.add(onUp);
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#polls.close();
    for (const n of this.#nodes) n.server.close();
  }

  /**
   * One store call with its deadline and its server's breaker around it; every failure is an outage value. No
   * connection: at once (`down`). Connected but late: after the deadline (`timeout`); a call that used its whole
   * per-call deadline opens the breaker, so a frozen server costs one deadline, not one per cold request.
   */
  async #call<T>(op: string, key: string, fn: (s: McServer, call: Call) => Promise<T>, timeoutMs = this.#commandTimeoutMs): Promise<Stored<T>> {
    if (this.#closed) return { ok: false, outage: { op, reason: 'down', message: 'store closed' } };
    const node = this.#ring.pick(key);
    const { server } = node;
    if (Date.now() < node.breakerOpenUntilMs || !server.ready) {
      this.#observer.error?.(op);
      const message = server.ready ? `${server.address} skipped after a recent failure` : `not connected to ${server.address}${server.lastError ? ` (${server.lastError})` : ''}`;
      return { ok: false, outage: { op, reason: 'down', message } };
    }
    const deadlineMs = Math.max(1, Math.min(timeoutMs, this.#commandTimeoutMs));
    const call: Call = { late: false };
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<typeof LATE>((resolve) => (timer = setTimeout(resolve, deadlineMs, LATE)));
    try {
      const answer = await Promise.race([fn(server, call), late]);
      if (answer !== LATE) return stored(answer);
      call.late = true;
      this.#observer.error?.(op);
      if (deadlineMs >= this.#commandTimeoutMs) node.breakerOpenUntilMs = Date.now() + BREAKER_OPEN_MS;
      return { ok: false, outage: { op, reason: 'timeout', message: `no answer from ${server.address} within ${deadlineMs} ms` } };
    } catch (err) {
      call.late = true;
      this.#observer.error?.(op);
      return { ok: false, outage: outageOf(op, err) };
    } finally {
      clearTimeout(timer);
    }
  }

  /** `add` the lock; taken after the store gave up on the call, it is dropped again at once (nobody holds it). */
  async #add(s: McServer, call: Call, lockKey: string, owner: string): Promise<boolean> {
    const took = await s.add(lockKey, owner, this.#lockTtlS);
    if (took && call.late) void releaseLock(s, lockKey, owner).catch(() => undefined);
    return took;
  }

  /** The handle of a lock we just took on `key`'s server. */
  #heldLock(key: string, lockKey: string, owner: string): LockHandle {
    const { server } = this.#ring.pick(key);
    const release = () => this.#call('unlock', key, (s) => releaseLock(s, lockKey, owner));
    return heldLock({ server, lockKey, owner, leaseMs: this.#lockLeaseMs, ttlS: this.#lockTtlS, release });
  }

  /**
   * The stand-in for pub/sub: wake the waiters when the token changed (with it), when a failure marker appeared, when
   * nobody holds the lock any more (its holder gave up or died), or when the store cannot be read (they re-read and
   * decide).
   */
  async #check(key: string, seen: string | undefined): Promise<PollVerdict> {
    const k = this.keys(key);
    const reply = await this.#call('poll', key, (s) => s.gets([k.token, k.failure, k.lock]));
    if (!reply.ok) return { wake: true, token: undefined };
    const entry = reply.value.get(k.token);
    if (entry !== undefined && outerOf(entry.value)?.fp !== seen) return { wake: true, token: (await this.#decode(key, k.token, entry)).token };
    return reply.value.has(k.failure) || !reply.value.has(k.lock) ? { wake: true, token: undefined } : { wake: false };
  }

  async #decode(key: string, mcKey: string, entry: McEntry | undefined): Promise<Pick<StoreRead, 'token' | 'unreadable'>> {
    this.#seen.set(key, entry ? outerOf(entry.value)?.fp : undefined);
    if (!entry) return { token: undefined };
    const decoded = decodeToken(mcKey, entry.value, this.#keyring);
    if (decoded.ok) return { token: decoded.token };
    this.#observer.decodeFailed?.(decoded.reason);
    // Sealed under a key this pod does not have (yet): another pod's, during a key rollout. Leave it for them.
    if (decoded.reason === 'foreign') return { token: undefined, unreadable: 'foreign' };
    // Never forwarded, never fatal: count it, say so without the content, and clear it (if unchanged) so a fresh token can land.
    this.#log.warn({ event: 'store.bad_value', reason: decoded.reason, key: mcKey }, 'unreadable token value in the store; treated as a miss');
    await this.#call('delete_bad', key, (s) => s.casDelete(mcKey, entry.cas));
    return { token: undefined, unreadable: 'bad' };
  }

  #emit(event: StoreEvent): void {
    for (const l of this.#listeners) l(event);
  }

  #allUp(): boolean {
    return this.#nodes.every((n) => n.server.ready);
  }
}
