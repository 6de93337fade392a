/**
 * Vitest globalSetup: one Redis cluster and one sentinel set for the whole run, shared by tests that only
 * read and write (tests that kill or freeze servers must start their own with test/helpers/redis.ts).
 * Tests get the addresses with `inject('redisCluster')` / `inject('redisSentinel')` from 'vitest'.
 */
import type { TestProject } from 'vitest/node';
import { startCluster, startSentinel, type RedisCluster, type RedisSentinelSet } from './redis.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisCluster: { nodes: { host: string; port: number }[] };
    redisSentinel: { sentinels: { host: string; port: number }[]; name: string };
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  // In parallel: each takes a few seconds, mostly waiting for gossip (cluster bus, sentinel hellos).
  const [cluster, sentinel] = await Promise.allSettled([
    startCluster().then((c) => (log(`redis cluster ready in ${Date.now() - started} ms`), c)),
    startSentinel().then((s) => (log(`redis sentinel set ready in ${Date.now() - started} ms`), s)),
  ]);
  if (cluster.status === 'rejected' || sentinel.status === 'rejected') {
    // Don't leave the half that did start running.
    await Promise.all([cluster, sentinel].map((r) => (r.status === 'fulfilled' ? r.value.stop() : undefined)));
    throw [cluster, sentinel].flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []))[0];
  }
  const c: RedisCluster = cluster.value;
  const s: RedisSentinelSet = sentinel.value;

  project.provide('redisCluster', { nodes: c.nodes });
  project.provide('redisSentinel', { sentinels: s.sentinels, name: s.name });

  return async () => {
    await Promise.all([c.stop(), s.stop()]);
  };
}

function log(message: string): void {
  // Timing only, handy when a slow CI machine makes the run creep up; off unless asked for.
  if (process.env.REDIS_HARNESS_DEBUG) console.log(`[global-setup] ${message}`);
}
