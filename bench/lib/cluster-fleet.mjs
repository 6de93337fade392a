// Helpers for the Redis Cluster fleet part (bench/run.mjs cluster64Phase): what the store did, summed over the
// cluster's masters, and a Prometheus histogram summed over the pods.
import net from 'node:net';
import { redisCli } from './redis.mjs';

/**
 * INFO commandstats of every node, summed: { command: { calls, failed, rejected } } (Redis 7 names subcommands
 * `cluster|info`). One `INFO commandstats` per node: the next snapshot sees it as `info` (a command counts once
 * it has run, so a snapshot does not see itself).
 */
export function clusterCommandStats(nodes) {
  const out = {};
  for (const n of nodes) {
    for (const line of redisCli(n.port, 'INFO', 'commandstats').split('\n')) {
      const m = /^cmdstat_([^:]+):(.*)$/.exec(line.trim());
      if (!m) continue;
      const f = Object.fromEntries(m[2].split(',').map((kv) => kv.split('=')));
      const c = (out[m[1]] ??= { calls: 0, failed: 0, rejected: 0 });
      c.calls += Number(f.calls ?? 0);
      c.failed += Number(f.failed_calls ?? 0);
      c.rejected += Number(f.rejected_calls ?? 0);
    }
  }
  return out;
}

/**
 * Commands between two clusterCommandStats() snapshots, leaving out `ignore` (the bench's own: its INFO snapshots and MONITOR),
 * each less `background` (commands per ms seen while the fleet sat idle) × `ms`: { command: { calls, failed } }.
 */
export function commandStatsDelta(before, after, { ignore = ['info', 'monitor'], background = {}, ms = 0 } = {}) {
  const d = {};
  for (const [k, v] of Object.entries(after)) {
    if (ignore.includes(k)) continue;
    const b = before[k] ?? { calls: 0, failed: 0, rejected: 0 };
    const calls = v.calls - b.calls - (background[k] ?? 0) * ms;
    const failed = v.failed - b.failed + (v.rejected - b.rejected);
    if (calls || failed) d[k] = { calls, failed };
  }
  return d;
}

/** { command: calls per ms } from a delta measured over `ms` (the idle fleet's own traffic). */
export function perMs(delta, ms) {
  return Object.fromEntries(Object.entries(delta).map(([k, v]) => [k, v.calls / Math.max(1, ms)]));
}

/**
 * Histogram `name` (its _bucket, _sum and _count samples with all of `labels`) summed over several /metrics texts:
 * { count, sum, buckets: [[le, cumulative count], …] } with le ascending (+Inf last).
 */
export function promHistogram(texts, name, labels = {}) {
  const buckets = new Map();
  let count = 0;
  let sum = 0;
  for (const text of texts) {
    for (const line of text.split('\n')) {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m || !m[1].startsWith(name)) continue;
      const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
      if (!Object.entries(labels).every(([k, v]) => have[k] === v)) continue;
      const v = Number(m[3]);
      if (m[1] === `${name}_bucket`) {
        const le = have.le === '+Inf' ? Infinity : Number(have.le);
        buckets.set(le, (buckets.get(le) ?? 0) + v);
      } else if (m[1] === `${name}_sum`) sum += v;
      else if (m[1] === `${name}_count`) count += v;
    }
  }
  return { count, sum, buckets: [...buckets.entries()].sort((a, b) => a[0] - b[0]) };
}

/** The upper bound (le) of the bucket that holds quantile `q` of a summed histogram (NaN when it is empty). */
export function bucketBound(h, q) {
  if (!h.count) return NaN;
  const rank = Math.max(1, Math.ceil(q * h.count));
  return h.buckets.find(([, n]) => n >= rank)?.[0] ?? Infinity;
}

/**
 * MONITOR on every node, to tell the commands clients sent (one round trip each) from the ones the Lua scripts ran
 * (INFO commandstats counts both). start() resolves once every node answered +OK; stop() closes the connections and
 * returns { sent: { command: n }, scripted: { command: n } }, leaving out `ignore` (the bench's own commands).
 */
export async function monitorNodes(nodes, ignore = ['info', 'monitor']) {
  const sent = {};
  const scripted = {};
  const socks = await Promise.all(
    nodes.map(
      (n) =>
        new Promise((resolve, reject) => {
          const s = net.connect({ host: n.host, port: n.port });
          let buf = '';
          let ok = false;
          s.setEncoding('latin1');
          s.on('error', reject);
          s.on('data', (chunk) => {
            buf += chunk;
            let i;
            while ((i = buf.indexOf('\r\n')) >= 0) {
              const line = buf.slice(0, i);
              buf = buf.slice(i + 2);
              if (!ok) {
                if (line === '+OK') {
                  ok = true;
                  resolve(s);
                } else reject(new Error(`MONITOR on ${n.port}: ${line}`));
                continue;
              }
              // +1712345678.123456 [0 127.0.0.1:40000] "evalsha" "…"   or   … [0 lua] "GET" "…"
              const m = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"/.exec(line);
              if (!m) continue;
              const cmd = m[2].toLowerCase();
              if (ignore.includes(cmd)) continue;
              const into = m[1] === 'lua' ? scripted : sent;
              into[cmd] = (into[cmd] ?? 0) + 1;
            }
          });
          s.write('MONITOR\r\n');
        }),
    ),
  );
  return {
    stop: async () => {
      await new Promise((r) => setTimeout(r, 50)); // what is on its way lands
      for (const s of socks) s.destroy();
      return { sent, scripted };
    },
  };
}
