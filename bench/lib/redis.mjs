// Redis for the bench: our own redis-server on a free port (no persistence), and INFO commandstats.
import { execFileSync } from 'node:child_process';

export function redisCli(port, ...args) {
  return execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** { command: calls } from INFO commandstats. */
export function commandStats(port) {
  const out = {};
  for (const line of redisCli(port, 'INFO', 'commandstats').split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim());
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

/** Commands issued between two commandStats() snapshots, leaving out the ones the bench itself sends. */
export function commandDelta(before, after, ignore = ['info', 'config', 'ping', 'dbsize', 'flushall']) {
  const d = {};
  for (const [k, v] of Object.entries(after)) {
    if (ignore.includes(k)) continue;
    const n = v - (before[k] ?? 0);
    if (n) d[k] = n;
  }
  return d;
}
