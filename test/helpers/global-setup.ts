/**
 * Vitest globalSetup: one Redis cluster and one sentinel set for the whole run, shared by tests that only
 * read and write (tests that kill or freeze servers must start their own with test/helpers/redis.ts).
 * Tests get the addresses with `inject('redisCluster')` / `inject('redisSentinel')` from 'vitest'.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { scanLogDir } from './leak-scan.js';
import { startCluster, startSentinel, type RedisCluster, type RedisSentinelSet } from './redis.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisCluster: { nodes: { host: string; port: number }[] };
    redisSentinel: { sentinels: { host: string; port: number }[]; name: string };
    /** Where test/helpers/log-capture.ts records every sidecar log line of the run, for the leak scan at the end. */
    testLogDir: string;
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
  const logDir = mkdtempSync(path.join(os.tmpdir(), 'ts-sidecar-logs-'));
  project.provide('testLogDir', logDir);

  return async () => {
    await Promise.all([c.stop(), s.stop()]);
    const { files, lines, leaks } = scanLogDir(logDir);
    // Printed on every run, so a scan that saw nothing (no lines recorded) is visible as such.
    console.log(`[leak scan] ${lines} log lines in ${files} files: ${leaks.length} leaks`);
    if (leaks.length > 0) {
      const where = leaks.slice(0, 20).map((l) => `  ${l.file}:${l.line}: ${l.pattern}`).join('\n');
      // An error thrown here is printed but does not fail the run (vitest 4): the exit code must say it.
      console.error(`[leak scan] secrets in sidecar logs (kept in ${logDir}):\n${where}`);
      process.exitCode = 1;
      return;
    }
    rmSync(logDir, { recursive: true, force: true });
  };
}

function log(message: string): void {
  // Timing only, handy when a slow CI machine makes the run creep up; off unless asked for.
  if (process.env.REDIS_HARNESS_DEBUG) console.log(`[global-setup] ${message}`);
}
