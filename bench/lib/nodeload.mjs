// Fallback load generator when wrk is missing: closed loop, `connections` keep-alive connections (undici Pool),
// latencies recorded per request. Prints the same BENCHJSON line as bench/lua/report.lua.
// argv: URL CONNECTIONS SECONDS [BODY_BYTES]
import { Pool } from 'undici';

const [url, connsArg, secsArg, bodyArg] = process.argv.slice(2);
const u = new URL(url);
const connections = Number(connsArg);
const seconds = Number(secsArg);
const bodyBytes = Number(bodyArg ?? 0);
const body = bodyBytes > 0 ? Buffer.alloc(bodyBytes, 'x') : null;
const pool = new Pool(u.origin, { connections, pipelining: 1 });
const lat = [];
let errors = 0;
let bytes = 0;
const started = performance.now();
const endAt = started + seconds * 1000;

async function loop() {
  while (performance.now() < endAt) {
    const t = performance.now();
    try {
      const r = await pool.request({ path: u.pathname + u.search, method: body ? 'POST' : 'GET', body, headers: body ? { 'content-type': 'application/octet-stream' } : {} });
      for await (const c of r.body) bytes += c.length;
      if (r.statusCode >= 400) errors++;
      lat.push(performance.now() - t);
    } catch {
      errors++;
    }
  }
}
await Promise.all(Array.from({ length: connections }, loop));
const durUs = Math.round((performance.now() - started) * 1000);
lat.sort((a, b) => a - b);
const pct = (p) => Math.round((lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))] ?? 0) * 1000);
const mean = lat.reduce((a, b) => a + b, 0) / (lat.length || 1);
process.stdout.write(
  `BENCHJSON ${JSON.stringify({ requests: lat.length, duration_us: durUs, bytes, connect: 0, read: 0, write: 0, status: errors, timeout: 0, p50: pct(50), p90: pct(90), p99: pct(99), p999: pct(99.9), max: pct(100), mean: mean * 1000 })}\n`,
);
await pool.close();
