/**
 * One wiring of token keeping (store → token endpoint client → token manager) for every command that gets tokens:
 * `start` (through Sidecar), `token ROUTE` and `demo`, so `token` fetches exactly as the proxy would.
 */
import type { Config } from './config/types.js';
import { createAuditLogger, type Logger } from './log.js';
import { OAuthClient, type TokenFetcher } from './oauth/client.js';
import { createStore } from './store/index.js';
import type { RedisStoreObserver } from './store/redis.js';
import type { TokenStore } from './store/store.js';
import { TokenManager, type TokenObserver } from './tokens/manager.js';

export interface TokenKeeping {
  readonly store: TokenStore;
  readonly fetcher: TokenFetcher;
  readonly manager: TokenManager;
  /** Whether the store answered within the start-up wait. */
  readonly storeReady: boolean;
  close(): Promise<void>;
}

export interface TokenKeepingOptions {
  log: Logger;
  /** Longest the start waits for the shared store before going on without it. */
  storeWaitMs: number;
  store?: TokenStore | undefined;
  fetcher?: TokenFetcher | undefined;
  storeObserver?: RedisStoreObserver | undefined;
  tokenObserver?: TokenObserver | undefined;
  /** Called with the store as soon as it exists (before the wait), e.g. for a health gauge. */
  onStore?: ((store: TokenStore) => void) | undefined;
}

export async function createTokenKeeping(config: Config, opts: TokenKeepingOptions): Promise<TokenKeeping> {
  const store = opts.store ?? (await createStore(config.store, opts.log, opts.storeObserver));
  opts.onStore?.(store);
  // Give the store a moment so the first requests share tokens; never wait long: requests must not depend on it.
  const storeReady = await store.whenReady(opts.storeWaitMs);
  const fetcher = opts.fetcher ?? new OAuthClient();
  const manager = new TokenManager({
    store,
    fetcher,
    log: opts.log,
    audit: createAuditLogger(config.audit.destination, opts.log),
    ...(opts.tokenObserver ? { observer: opts.tokenObserver } : {}),
    ...(config.store.type !== 'memory' ? { lockWaitTimeoutMs: config.store.lockWaitTimeoutMs, coordinationTimeoutMs: config.store.coordinationTimeoutMs } : {}),
  });
  manager.setRoutes(config.routes);
  return {
    store,
    fetcher,
    manager,
    storeReady,
    close: async () => {
      manager.close();
      await Promise.allSettled([store.close(), fetcher instanceof OAuthClient ? fetcher.close() : undefined]);
    },
  };
}
