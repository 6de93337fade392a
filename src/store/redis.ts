import type { Logger } from '../log.js';
import type { RedisStoreConfig } from '../config/types.js';
import type { TokenStore } from './store.js';

export const RedisStore = {
  async connect(_config: RedisStoreConfig, _log: Logger): Promise<TokenStore> {
    throw new Error('the redis store is not built yet');
  },
};
