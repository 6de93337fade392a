/**
 * The shared store on Redis (standalone, Sentinel or Cluster) through ioredis.
 *
 * Rules: a call fails at once while disconnected (no offline queue); a connected Redis that answers late is waited for
 * up to the call's deadline (the caller's, at most `commandTimeout`); a call that used a whole `commandTimeout` opens a
 * breaker that skips the store for a while, so a frozen Redis costs a cold request one deadline, and steady-state
 * requests nothing: they never reach this file.
 * Pub/sub runs on its own connection and tells every pod about refreshed and invalidated tokens.
 */
import { randomBytes } from 'node:crypto';
import type { Stored } from '../core/errors.js';
import type { Logger } from '../log.js';
import type { RedisStoreConfig } from '../config/types.js';
import type { Token } from '../core/token.js';
import { Keyring } from './crypto.js';
import { decodeSecret, decodeToken, encodeSecret, encodeToken } from './codec.js';
import { createClient, errMessage, isReplyError, outageOf, parseEventMessage, parseFailure, type Client, type EventMessage } from './redis-client.js';
import { DELETE_IF_EQUALS, FAILURE_PUT, LOCK_RENEW, READ_OR_LOCK, TOKEN_INVALIDATE, TOKEN_PUT_NEWER, runScript } from './scripts.js';
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

/** After a failed call, skip Redis this long before trying again (a frozen Redis must not tax every cold request). */
const BREAKER_OPEN_MS = 1_000;
/** What the deadline's side of a race resolves with. */
const LATE = Symbol('late');

export interface RedisStoreObserver {
  error?(op: string): void;
  decodeFailed?(reason: string): void;
  up?(up: boolean): void;
}

export class RedisStore implements TokenStore {
  readonly kind = 'redis' as const;
  readonly #cmd: Client;
  readonly #sub: Client;
  readonly #prefix: string;
  readonly #channel: string;
  readonly #keyring: Keyring | undefined;
  readonly #lockLeaseMs: number;
  readonly #commandTimeoutMs: number;
  readonly #log: Logger;
  readonly #observer: RedisStoreObserver;
  readonly #listeners: ((e: StoreEvent) => void)[] = [];
  readonly #waiters = new Map<string, Set<(token?: Token) => void>>();
  #breakerOpenUntilMs = 0;
  #cmdReady = false;
  #subReady = false;
  #wasConnected = false;
  /** Why the command connection is not up (the client library's text), for the outages it causes. */
  #connectionError: string | undefined;
  #closed = false;

  private constructor(config: RedisStoreConfig, log: Logger, observer: RedisStoreObserver) {
    this.#prefix = config.keyPrefix;
    this.#channel = `${config.keyPrefix}events`;
    this.#keyring = config.encryptionKeys.length > 0 ? new Keyring(config.encryptionKeys) : undefined;
    this.#lockLeaseMs = config.lockLeaseMs;
    this.#commandTimeoutMs = config.commandTimeoutMs;
    this.#log = log;
    this.#observer = observer;
    this.#cmd = createClient(config, { requestPath: true });
    this.#sub = createClient(config, { requestPath: false });
    this.#watch(this.#cmd, 'commands', (ready) => (this.#cmdReady = ready));
    // Events are live only once SUBSCRIBE succeeded on the current connection (it may be refused, e.g. by an ACL).
    this.#watch(this.#sub, 'events', (ready) => {
      if (!ready) {
        this.#subReady = false;
        return;
      }
      this.#sub.subscribe(this.#channel).then(
        () => (this.#subReady = true),
        (err: unknown) => this.#log.warn({ event: 'store.subscribe_failed', err: errMessage(err) }, 'could not subscribe to token events; polling the store instead'),
      );
    });
    this.#sub.on('message', (channel: string, message: string) => {
      if (channel === this.#channel) this.#onMessage(message);
    });
  }

  /**
   * Connects in the background: a pod starts and serves even while Redis is down (it fetches for itself until
   * Redis answers).
   */
  static async connect(config: RedisStoreConfig, log: Logger, observer: RedisStoreObserver = {}): Promise<RedisStore> {
    return new RedisStore(config, log, observer);
  }

  tokenKey(key: string): string {
    return `${this.#prefix}{${key}}:token`;
  }

  lockKey(key: string): string {
    return `${this.#prefix}{${key}}:lock`;
  }

  failureKey(key: string): string {
    return `${this.#prefix}{${key}}:failure`;
  }

  async get(key: string): Promise<Stored<Token | undefined>> {
    const redisKey = this.tokenKey(key);
    const reply = await this.#call('get', () => this.#cmd.get(redisKey));
    return reply.ok ? stored((await this.#decode(redisKey, reply.value)).token) : reply;
  }

  async read(key: string, opts: CallOptions = {}): Promise<Stored<StoreRead>> {
    const redisKey = this.tokenKey(key);
    // Same hash tag, same slot: one MGET even on a Cluster.
    const reply = await this.#call('get', () => this.#cmd.mget(redisKey, this.failureKey(key)), opts.timeoutMs);
    if (!reply.ok) return reply;
    const [text, failure] = reply.value;
    return stored({ ...(await this.#decode(redisKey, text ?? null)), failure: parseFailure(failure ?? null) });
  }

  grantKey(key: string): string {
    return `${this.#prefix}{${key}}:grant`;
  }

  async getGrantState(key: string): Promise<Stored<GrantRead>> {
    const reply = await this.#call('get_grant', () => this.#cmd.get(this.grantKey(key)));
    if (!reply.ok) return reply;
    const value = reply.value === null ? undefined : decodeSecret(this.grantKey(key), reply.value, this.#keyring);
    return stored({ value, unreadable: reply.value !== null && value === undefined });
  }

  async putGrantState(key: string, value: string, ttlMs: number): Promise<Stored<void>> {
    const sealed = encodeSecret(this.grantKey(key), value, this.#keyring);
    const reply = await this.#call('put_grant', () => this.#cmd.set(this.grantKey(key), sealed, 'PX', Math.max(1, Math.floor(ttlMs))));
    return reply.ok ? STORED_VOID : reply;
  }

  async putFailure(key: string, failure: SharedFailure): Promise<Stored<void>> {
    const ttlMs = Math.floor(failure.untilMs - Date.now());
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) return STORED_VOID;
    const value = JSON.stringify({ v: 1, kind: failure.kind, msg: failure.message.slice(0, 300), until: failure.untilMs });
    const reply = await this.#call('put_failure', () => runScript(this.#cmd, FAILURE_PUT, [this.failureKey(key)], [value, ttlMs, this.#channel, this.#message('f', key, '')]));
    return reply.ok ? STORED_VOID : reply;
  }

  async #decode(redisKey: string, text: string | null): Promise<Pick<StoreRead, 'token' | 'unreadable'>> {
    if (text === null) return { token: undefined };
    const decoded = decodeToken(redisKey, text, this.#keyring);
    if (decoded.ok) return { token: decoded.token };
    this.#observer.decodeFailed?.(decoded.reason);
    // Sealed under a key this pod does not have (yet): another pod's, during a key rollout. Leave it for them.
    if (decoded.reason === 'foreign') return { token: undefined, unreadable: 'foreign' };
    // Never forwarded, never fatal: count it, say so without the content, and clear it so a fresh token can land.
    this.#log.warn({ event: 'store.bad_value', reason: decoded.reason, key: redisKey }, 'unreadable token value in the store; treated as a miss');
    await this.#call('delete_bad', () => runScript(this.#cmd, DELETE_IF_EQUALS, [redisKey], [text]));
    return { token: undefined, unreadable: 'bad' };
  }

  async put(key: string, token: Token): Promise<Stored<void>> {
    const redisKey = this.tokenKey(key);
    const ttlMs = Math.floor(token.expiresAtMs - Date.now());
    // A token with no time left is not worth sharing, and PX must be a positive integer: never NaN, 0 or "forever".
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) return STORED_VOID;
    const value = encodeToken(redisKey, token, this.#keyring);
    const reply = await this.#call('put', () =>
      runScript(this.#cmd, TOKEN_PUT_NEWER, [redisKey, this.failureKey(key)], [value, token.issuedAtMs, ttlMs, this.#channel, this.#message('r', key, token.fingerprint, value)]),
    );
    return reply.ok ? STORED_VOID : reply;
  }

  async tryLock(key: string, opts: CallOptions = {}): Promise<Stored<LockHandle | undefined>> {
    const lockKey = this.lockKey(key);
    const owner = randomBytes(16).toString('hex');
    const reply = await this.#call('lock', () => this.#cmd.set(lockKey, owner, 'PX', this.#lockLeaseMs, 'NX'), opts.timeoutMs);
    if (!reply.ok) return this.#gaveUp(reply, lockKey, owner);
    return stored(reply.value === 'OK' ? this.#heldLock(lockKey, owner) : undefined);
  }

  async readOrLock(key: string, opts: ReadOrLockOptions = {}): Promise<Stored<ReadOrLock>> {
    const redisKey = this.tokenKey(key);
    const lockKey = this.lockKey(key);
    const owner = randomBytes(16).toString('hex');
    const staleAtOrBeforeMs = opts.lockIfIssuedAtOrBeforeMs ?? -1;
    const reply = await this.#call(
      'get',
      () => runScript(this.#cmd, READ_OR_LOCK, [redisKey, this.failureKey(key), lockKey], [owner, this.#lockLeaseMs, staleAtOrBeforeMs]),
      opts.timeoutMs,
    );
    if (!reply.ok) return this.#gaveUp(reply, lockKey, owner);
    const [text, failure, locked, held] = Array.isArray(reply.value) ? (reply.value as unknown[]) : [];
    return stored({
      ...(await this.#decode(redisKey, typeof text === 'string' ? text : null)),
      failure: parseFailure(typeof failure === 'string' ? failure : null),
      lock: locked === 1 ? this.#heldLock(lockKey, owner) : undefined,
      lockHeld: held === 1,
    });
  }

  /**
   * A lock request given up on as late may still be carried out when a slow (or frozen, then thawed) Redis gets to it,
   * leaving a lock nobody holds until its lease ends, which every other pod would wait out. Send the release right
   * behind it on the same connection: Redis runs them in order, so the lock, if it was taken, is dropped at once.
   */
  #gaveUp<T>(reply: Stored<T>, lockKey: string, owner: string): Stored<T> {
    if (!reply.ok && reply.outage.reason === 'timeout') runScript(this.#cmd, DELETE_IF_EQUALS, [lockKey], [owner]).catch(() => undefined);
    return reply;
  }

  /** The handle of a lock we just took: renewed until released, released only while it is still ours. */
  #heldLock(lockKey: string, owner: string): LockHandle {
    const leaseMs = this.#lockLeaseMs;
    let held = true;
    // Renew well before the lease ends, so a slow token endpoint never costs us the lock mid-fetch.
    const renew = setInterval(() => {
      runScript(this.#cmd, LOCK_RENEW, [lockKey], [owner, leaseMs]).then(
        (renewed) => {
          if (renewed !== 1) {
            held = false;
            clearInterval(renew);
          }
        },
        () => undefined, // a missed renewal is retried at the next tick; the lease covers two more
      );
    }, Math.max(50, Math.floor(leaseMs / 3)));
    renew.unref();
    return {
      get held() {
        return held;
      },
      release: async () => {
        clearInterval(renew);
        if (!held) return STORED_VOID;
        held = false;
        const reply = await this.#call('unlock', () => runScript(this.#cmd, DELETE_IF_EQUALS, [lockKey], [owner]));
        return reply.ok ? STORED_VOID : reply;
      },
    };
  }

  waitForEvent(key: string, timeoutMs: number): Promise<Token | undefined> {
    return new Promise((resolve) => {
      let set = this.#waiters.get(key);
      if (!set) this.#waiters.set(key, (set = new Set()));
      const waiters = set;
      const done = (token?: Token) => {
        clearTimeout(timer);
        waiters.delete(done);
        if (waiters.size === 0) this.#waiters.delete(key);
        resolve(token);
      };
      const timer = setTimeout(() => done(), timeoutMs);
      timer.unref();
      waiters.add(done);
    });
  }

  async invalidate(key: string, fingerprint: string, opts: CallOptions = {}): Promise<Stored<boolean>> {
    const reply = await this.#call(
      'invalidate',
      () => runScript(this.#cmd, TOKEN_INVALIDATE, [this.tokenKey(key)], [fingerprint, this.#channel, this.#message('i', key, fingerprint)]),
      opts.timeoutMs,
    );
    return reply.ok ? stored(reply.value === 1) : reply;
  }

  onEvent(listener: (e: StoreEvent) => void): void {
    this.#listeners.push(listener);
  }

  eventsLive(): boolean {
    return this.#subReady;
  }

  health(): StoreHealth {
    return this.#cmdReady && this.#subReady && Date.now() >= this.#breakerOpenUntilMs ? 'ok' : 'degraded';
  }

  async whenReady(timeoutMs: number): Promise<boolean> {
    if (this.#cmdReady) return true;
    return new Promise((resolve) => {
      const done = (ready: boolean) => {
        clearTimeout(timer);
        this.#cmd.off('ready', onReady);
        resolve(ready);
      };
      const onReady = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      timer.unref();
      this.#cmd.on('ready', onReady);
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const waiters of this.#waiters.values()) for (const w of waiters) w();
    this.#cmd.disconnect();
    this.#sub.disconnect();
  }

  /**
   * One store call with its deadline and the breaker around it; every failure is an outage value. No connection: at
   * once (`down`). Connected but late: after `timeoutMs` (`timeout`), and a call that used its whole per-call deadline
   * opens the breaker, so a frozen Redis costs one deadline, not one per cold request.
   */
  async #call<T>(op: string, fn: () => Promise<T>, timeoutMs = this.#commandTimeoutMs): Promise<Stored<T>> {
    if (this.#closed) return { ok: false, outage: { op, reason: 'down', message: 'store closed' } };
    if (Date.now() < this.#breakerOpenUntilMs || !this.#cmdReady) {
      this.#observer.error?.(op);
      const message = this.#cmdReady ? 'skipped after a recent failure' : `not connected${this.#connectionError ? ` (${this.#connectionError})` : ''}`;
      return { ok: false, outage: { op, reason: 'down', message } };
    }
    const deadlineMs = Math.max(1, Math.min(timeoutMs, this.#commandTimeoutMs));
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<typeof LATE>((resolve) => (timer = setTimeout(resolve, deadlineMs, LATE)));
    try {
      const answer = await Promise.race([fn(), late]);
      if (answer !== LATE) return stored(answer);
      this.#observer.error?.(op);
      if (deadlineMs >= this.#commandTimeoutMs) this.#breakerOpenUntilMs = Date.now() + BREAKER_OPEN_MS;
      return { ok: false, outage: { op, reason: 'timeout', message: `no answer within ${deadlineMs} ms` } };
    } catch (err) {
      this.#observer.error?.(op);
      // Script and reply errors are answers, not outages; timeouts and connection errors open the breaker.
      if (!isReplyError(err)) this.#breakerOpenUntilMs = Date.now() + BREAKER_OPEN_MS;
      return { ok: false, outage: outageOf(op, err) };
    } finally {
      clearTimeout(timer);
    }
  }

  #message(e: EventMessage['e'], key: string, fp: string, value?: string): string {
    return JSON.stringify({ e, k: key, fp, ...(value === undefined ? {} : { v: value }) } satisfies EventMessage);
  }

  #onMessage(text: string): void {
    const msg = parseEventMessage(text);
    if (!msg) return;
    const { e, k, fp, v } = msg;
    // A value that does not decode (another version, another key) is ignored: the waiter reads the store instead.
    const decoded = e === 'r' && v !== undefined ? decodeToken(this.tokenKey(k), v, this.#keyring) : undefined;
    const token = decoded?.ok && decoded.token.fingerprint === fp ? decoded.token : undefined;
    if (e !== 'f') {
      const event: StoreEvent = e === 'r' ? { kind: 'refreshed', key: k, fingerprint: fp, token } : { kind: 'invalidated', key: k, fingerprint: fp };
      for (const l of this.#listeners) l(event);
    }
    const waiters = this.#waiters.get(k);
    if (waiters) for (const w of [...waiters]) w(token);
  }

  #watch(client: Client, role: 'commands' | 'events', setReady: (ready: boolean) => void): void {
    let up = false;
    client.on('ready', () => {
      setReady(true);
      if (role === 'commands') {
        this.#connectionError = undefined;
        this.#breakerOpenUntilMs = 0;
        this.#observer.up?.(true);
        if (this.#wasConnected) for (const l of this.#listeners) l({ kind: 'reconnected' });
        this.#wasConnected = true;
      }
      if (!up) this.#log.info({ event: 'store.connected', role }, `redis ${role} connection ready`);
      up = true;
    });
    const down = (err?: unknown) => {
      setReady(false);
      if (role === 'commands') this.#observer.up?.(false);
      if (up && !this.#closed) this.#log.warn({ event: 'store.disconnected', role, err: err === undefined ? undefined : errMessage(err) }, `redis ${role} connection lost; reconnecting`);
      up = false;
    };
    client.on('close', () => down());
    client.on('end', () => down());
    // ioredis emits 'error' on every failed reconnect attempt (a listener is also what keeps it from crashing the
    // process). The cause (WRONGPASS, a certificate, ECONNREFUSED) is worth a warning, once per change of cause.
    let lastCause: string | undefined;
    client.on('error', (err: unknown) => {
      const message = errMessage(err);
      if (role === 'commands') this.#connectionError = message;
      const cause = message.replace(/\d+\.\d+\.\d+\.\d+:\d+|\[[0-9a-f:]+\]:\d+/gi, 'ADDR');
      if (cause === lastCause) return this.#log.debug({ event: 'store.error', role, err: message }, 'redis error');
      lastCause = cause;
      this.#log.warn({ event: 'store.connect_failed', role, err: message }, `redis ${role} connection failed: ${message}`);
    });
    client.on('ready', () => (lastCause = undefined));
  }
}
