/**
 * ioredis clients for the Redis store, and what their failures mean. Request-path connections fail fast (deadline
 * per command, no offline queue, no retries of a sent command); the pub/sub connection queues its SUBSCRIBE until
 * connected. Both reconnect forever with a capped backoff.
 */
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { ConnectionOptions } from 'node:tls';
import type { StoreOutage } from '../core/errors.js';
import type { RedisStoreConfig } from '../config/types.js';
import type { SharedFailure } from './store.js';

export type Client = Redis | Cluster;

const reconnectDelayMs = (times: number) => Math.min(100 * 2 ** Math.min(times, 5), 2_000);

export function createClient(config: RedisStoreConfig, opts: { requestPath: boolean }): Client {
  const tls = tlsOptions(config);
  const base: RedisOptions = {
    ...(config.username ? { username: config.username } : {}),
    ...(config.password ? { password: config.password.reveal() } : {}),
    ...(tls ? { tls } : {}),
    connectTimeout: 2_000,
    // The ready check runs INFO, which a least-privilege ACL user may not run: ioredis then prints a plain-text warning
    // on every connect (not JSON, in the pod's log). A Redis still loading answers LOADING, which is an outage to us
    // like any other (each pod fetches for itself meanwhile), so the check adds nothing.
    enableReadyCheck: false,
    enableOfflineQueue: !opts.requestPath,
    maxRetriesPerRequest: opts.requestPath ? 0 : null,
    // We subscribe on every 'ready' ourselves, so we know whether it worked.
    autoResubscribe: false,
    ...(opts.requestPath ? { commandTimeout: config.commandTimeoutMs } : {}),
    retryStrategy: reconnectDelayMs,
    lazyConnect: false,
  };
  if (config.cluster) {
    const clusterOpts: ClusterOptions = {
      redisOptions: base,
      enableOfflineQueue: !opts.requestPath,
      clusterRetryStrategy: reconnectDelayMs,
      scaleReads: 'master',
      ...(tls ? { dnsLookup: (address: string, callback: (err: null, address: string) => void) => callback(null, address) } : {}),
    };
    return new Cluster(config.cluster, clusterOpts);
  }
  if (config.sentinels) {
    return new Redis({
      ...base,
      sentinels: config.sentinels,
      name: config.name ?? 'mymaster',
      ...(config.sentinelPassword ? { sentinelPassword: config.sentinelPassword.reveal() } : {}),
      ...(tls ? { enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: reconnectDelayMs,
    });
  }
  return new Redis(config.url ?? 'redis://127.0.0.1:6379', base);
}

function tlsOptions(config: RedisStoreConfig): ConnectionOptions | undefined {
  const useTls = config.url?.startsWith('rediss://') || config.tls !== undefined;
  if (!useTls) return undefined;
  const t = config.tls;
  return {
    ...(t?.ca ? { ca: t.ca } : {}),
    ...(t?.cert ? { cert: t.cert } : {}),
    ...(t?.key ? { key: t.key.reveal() } : {}),
    ...(t?.servername ? { servername: t.servername } : {}),
  };
}

/** Script and reply errors are answers from a live server; everything else means no (timely) answer. */
export function isReplyError(err: unknown): boolean {
  return err instanceof Error && /^(ERR|NOSCRIPT|WRONGTYPE)/.test(err.message);
}

/** A failed call as an outage: connected but late (`timeout`), refused by the server (`error`), or no connection. */
export function outageOf(op: string, err: unknown): StoreOutage {
  const message = errMessage(err);
  if (isReplyError(err)) return { op, reason: 'error', message };
  if (/timed out/i.test(message)) return { op, reason: 'timeout', message };
  return { op, reason: 'down', message };
}

export function parseFailure(text: string | null): SharedFailure | undefined {
  if (text === null) return undefined;
  try {
    const v = JSON.parse(text) as Record<string, unknown>;
    const { kind, msg, until } = v;
    if ((kind !== 'rejected' && kind !== 'unavailable') || typeof msg !== 'string' || typeof until !== 'number' || !Number.isFinite(until)) return undefined;
    return { kind, message: msg, untilMs: until };
  } catch {
    return undefined;
  }
}

export function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export interface EventMessage {
  /** refreshed, invalidated, failed */
  e: 'r' | 'i' | 'f';
  k: string;
  fp: string;
  /**
   * On `r`: the value as stored (sealed when encryption is on), so waiting pods take the token from the event instead
   * of reading it back: one round trip less per pod, which under load is what a waiter's wake-up costs. Anyone who
   * can subscribe to the channel can read the key too: it adds no exposure.
   */
  v?: string | undefined;
}

/** An event off the channel, or undefined for anything else (another version, garbage). */
export function parseEventMessage(text: string): EventMessage | undefined {
  let msg: unknown;
  try {
    msg = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof msg !== 'object' || msg === null) return undefined;
  const { e, k, fp, v } = msg as Record<string, unknown>;
  if (typeof k !== 'string' || typeof fp !== 'string' || (e !== 'r' && e !== 'i' && e !== 'f')) return undefined;
  return { e, k, fp, v: typeof v === 'string' ? v : undefined };
}
