import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration tests start real servers and redis-server processes; on a 2-core machine a little
    // parallelism is faster than none, and every server binds port 0 so files never collide.
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
