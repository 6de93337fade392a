// Redis for the bench: our own redis-server on a free port (no persistence), INFO commandstats, a PING round trip,
// and a Redis Cluster of masters only (started by the bench, cleaned up with everything else it started).
import { execFile, execFileSync } from 'node:child_process';
import net from 'node:net';
import { join } from 'node:path';
import { freePort, sleep, startProcess } from './procs.mjs';

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

/**
 * Round trip of a PING on an open connection to 127.0.0.1:`port` (through a relay, the round trip the pods see),
 * in ms: the median of `n`.
 */
export async function redisPingMs(port, n = 3) {
  const s = net.connect({ host: '127.0.0.1', port });
  s.setNoDelay(true);
  try {
    await new Promise((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const times = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await new Promise((resolve, reject) => {
        let got = '';
        const onData = (b) => {
          got += b.toString();
          if (got.includes('+PONG')) {
            s.off('data', onData);
            resolve();
          }
        };
        s.on('data', onData);
        s.once('error', reject);
        s.write('PING\r\n');
      });
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    return times[times.length >> 1];
  } finally {
    s.destroy();
  }
}

function clusterInfo(port) {
  const out = new Map();
  for (const line of redisCli(port, 'CLUSTER', 'INFO').split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) out.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return out;
}

/**
 * A Redis Cluster of `masters` masters and no replicas on free ports (each with an explicit bus port: the default
 * port + 10000 may be taken or past 65535), in memory only, pinned to `cpus`, config files and logs in `dir`.
 * Resolves once every node reports cluster_state:ok with all 16384 slots and every master known, as a client needs.
 * Returns { nodes: [{host, port}], procs, stop() }.
 */
export async function startRedisCluster({ dir, masters = 3, cpus = '0', timeoutMs = 30_000 }) {
  const deadline = Date.now() + timeoutMs;
  const procs = [];
  const used = new Set();
  const port = async () => {
    for (;;) {
      const p = await freePort();
      if (!used.has(p)) {
        used.add(p);
        return p;
      }
    }
  };
  const stop = () => Promise.all(procs.map((p) => p.stop('SIGKILL')));
  try {
    const nodes = [];
    for (let i = 0; i < masters; i++) {
      for (let attempt = 0; ; attempt++) {
        const [p, bus] = [await port(), await port()];
        const proc = startProcess(`redis-cluster-${p}`, 'redis-server', [
          '--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'yes',
          '--dir', dir, '--logfile', join(dir, `node-${p}.log`),
          '--cluster-enabled', 'yes', '--cluster-port', String(bus), '--cluster-node-timeout', '2000',
          '--cluster-config-file', join(dir, `nodes-${p}.conf`),
        ], { cpus });
        let up = false;
        for (const t0 = Date.now(); Date.now() - t0 < 5000 && proc.child.exitCode === null; ) {
          try {
            if (redisCli(p, 'PING').includes('PONG')) {
              up = true;
              break;
            }
          } catch {
            /* not yet */
          }
          await sleep(50);
        }
        if (up) {
          procs.push(proc);
          nodes.push({ host: '127.0.0.1', port: p });
          break;
        }
        await proc.stop('SIGKILL');
        if (attempt === 2) throw new Error(`redis cluster node on port ${p} would not start: ${proc.stderr()}`);
      }
    }
    await new Promise((resolve, reject) => {
      execFile('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `${n.host}:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'],
        { timeout: Math.max(1000, deadline - Date.now()), encoding: 'utf8' },
        (err, stdout, stderr) => (err ? reject(new Error(`redis-cli --cluster create failed: ${err.message}\n${stdout}\n${stderr}`)) : resolve()));
    });
    for (const n of nodes) {
      for (;;) {
        let info;
        try {
          info = clusterInfo(n.port);
        } catch {
          info = new Map();
        }
        if (info.get('cluster_state') === 'ok' && info.get('cluster_slots_ok') === '16384' && info.get('cluster_known_nodes') === String(masters)) break;
        if (Date.now() > deadline) throw new Error(`cluster node ${n.port} not ok within ${timeoutMs} ms: ${JSON.stringify(Object.fromEntries(info))}`);
        await sleep(100);
      }
    }
    return { nodes, procs, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
