// wrk (Debian's package) as the load generator, pinned beside the upstream. One thread; the Lua script prints a
// JSON summary (latencies in µs from wrk's own histogram; `--latency` is passed as well).
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const script = join(dirname(fileURLToPath(import.meta.url)), '..', 'lua', 'report.lua');

/**
 * Run wrk for `seconds` at `connections` against `url`; `bodyBytes` > 0 makes it a POST of that size.
 * Resolves { requests, rps, p50Ms, p90Ms, p99Ms, p999Ms, maxMs, errors }.
 */
export function runWrk({ url, connections, seconds, bodyBytes = 0, cpus = '0' }) {
  const args = ['-c', cpus, 'wrk', '-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s', '--latency', '-s', script, url];
  return new Promise((resolve, reject) => {
    const child = execFile('taskset', args, { env: { ...process.env, BENCH_BODY: String(bodyBytes) }, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const line = stdout.split('\n').find((l) => l.startsWith('BENCHJSON '));
      if (!line) return reject(new Error(`wrk gave no summary (${err?.message ?? ''}): ${stderr}${stdout}`));
      const j = JSON.parse(line.slice('BENCHJSON '.length));
      const secs = j.duration_us / 1e6;
      resolve({
        requests: j.requests,
        rps: j.requests / secs,
        p50Ms: j.p50 / 1000,
        p90Ms: j.p90 / 1000,
        p99Ms: j.p99 / 1000,
        p999Ms: j.p999 / 1000,
        maxMs: j.max / 1000,
        errors: j.connect + j.read + j.write + j.status + j.timeout,
        errorDetail: { connect: j.connect, read: j.read, write: j.write, status: j.status, timeout: j.timeout },
      });
    });
    child.on('error', reject);
  });
}
