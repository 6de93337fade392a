// Steady traffic for the slow-store part: on each sidecar URL, LOOPS closed loops (one keep-alive connection each)
// send GET PATH, then pause PAUSE_MS, until SECONDS have passed.
// argv: PATH SECONDS LOOPS PAUSE_MS URL...
// Prints {"done":true,"startedAt","stoppedAt" (Date.now() ms),"requests","statuses":{code:n},"p50Ms","p99Ms","maxMs","over100ms",
// "maxAfterColdMs","over100msAfterCold"} (the last two: requests sent after the first COLD_MS, once the cold fetch is over).
import { Pool } from 'undici';

const [path, secsArg, loopsArg, pauseArg, ...urls] = process.argv.slice(2);
const loops = Number(loopsArg);
const pause = Number(pauseArg);
const pools = urls.map((u) => new Pool(u, { connections: loops, pipelining: 1 }));
const statuses = {};
const lat = [];
const latAfterCold = [];
const COLD_MS = 2000;
const startedAt = Date.now();
const t00 = performance.now();
const endAt = t00 + Number(secsArg) * 1000;
let stoppedAt;

async function loop(pool) {
  while (performance.now() < endAt) {
    const t0 = performance.now();
    let status = 0;
    try {
      const r = await pool.request({ path, method: 'GET' });
      await r.body.dump();
      status = r.statusCode;
    } catch {
      /* counted as status 0 */
    }
    lat.push(performance.now() - t0);
    if (t0 - t00 >= COLD_MS) latAfterCold.push(performance.now() - t0);
    statuses[status] = (statuses[status] ?? 0) + 1;
    await new Promise((r) => setTimeout(r, pause));
  }
  stoppedAt ??= Date.now(); // the first loop to see the deadline: traffic stops here
}

await Promise.all(pools.flatMap((p) => Array.from({ length: loops }, () => loop(p))));
lat.sort((a, b) => a - b);
const q = (p) => lat[Math.min(lat.length - 1, Math.ceil((p / 100) * lat.length) - 1)];
process.stdout.write(
  `${JSON.stringify({ done: true, startedAt, stoppedAt, requests: lat.length, statuses, p50Ms: q(50), p99Ms: q(99), maxMs: lat.at(-1), over100ms: lat.filter((x) => x > 100).length, maxAfterColdMs: Math.max(...latAfterCold), over100msAfterCold: latAfterCold.filter((x) => x > 100).length })}\n`,
);
await Promise.all(pools.map((p) => p.close()));
