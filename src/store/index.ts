import type { Logger } from '../log.js';
import type { StoreConfig } from '../config/types.js';
import { MemoryStore } from './memory.js';
import type { RedisStoreObserver } from './redis.js';
import type { TokenStore } from './store.js';

export async function createStore(config: StoreConfig, log: Logger, observer?: RedisStoreObserver): Promise<TokenStore> {
  if (config.type === 'memory') return new MemoryStore();
  if (config.type === 'memcached') {
    const { MemcachedStore } = await import('./memcached.js');
    return MemcachedStore.connect(config, log, observer);
  }
  const { RedisStore } = await import('./redis.js');
  return RedisStore.connect(config, log, observer);
}
