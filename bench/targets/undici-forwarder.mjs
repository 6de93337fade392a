// The bar for the product's hot path (shared/notes/performance.md): node:http server → rewrite the path, drop
// hop-by-hop headers, set a static Authorization, `pool.stream()` on one undici Pool per upstream origin, writing
// straight into the ServerResponse, the IncomingMessage as the request body.
// Env: UPSTREAM (origin), PREFIX (/bench), PORT (0), and for the tail investigation:
//   SERVER_HWM   highWaterMark of the node:http server's sockets/responses (bytes)
//   TRACE=1      record per-request time inside the proxy and GC pauses; printed as JSON on SIGUSR2
import http from 'node:http';
import { PerformanceObserver } from 'node:perf_hooks';
import { Pool } from 'undici';

const UPSTREAM = process.env.UPSTREAM;
const PREFIX = process.env.PREFIX ?? '/bench';
const AUTH = 'Bearer static-bench-token-0123456789abcdef';
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'authorization', 'expect']);
const RESP_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

const pool = new Pool(UPSTREAM, { keepAliveTimeout: 30_000 });

const trace = process.env.TRACE === '1';
const slow = []; // [startMs, durMs] of requests over 2 ms inside the proxy
const gcs = []; // [startMs, durMs, kind]
let served = 0;
if (trace) {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push([e.startTime, e.duration, e.detail?.kind ?? e.kind]);
  }).observe({ entryTypes: ['gc'] });
  process.on('SIGUSR2', () => {
    process.stdout.write(`${JSON.stringify({ trace: true, served, slow, gcs })}\n`);
    slow.length = 0;
    gcs.length = 0;
    served = 0;
  });
}

function handler(req, res) {
  const t0 = trace ? performance.now() : 0;
  const raw = req.rawHeaders;
  const headers = [];
  for (let i = 0; i < raw.length; i += 2) {
    if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  }
  headers.push('authorization', AUTH);
  const path = req.url.startsWith(PREFIX) ? req.url.slice(PREFIX.length) || '/' : req.url;
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  if (trace) {
    res.once('finish', () => {
      served++;
      const d = performance.now() - t0;
      if (d > 2) slow.push([t0, d]);
    });
  }
  pool
    .stream({ path, method: req.method, headers, body: hasBody ? req : null }, ({ statusCode, headers: h }) => {
      for (const k of RESP_HOP) delete h[k];
      res.writeHead(statusCode, h);
      return res;
    })
    .catch(() => {
      if (!res.headersSent) {
        res.writeHead(502);
        res.end();
      } else res.destroy();
    });
}

const hwm = Number(process.env.SERVER_HWM ?? 0);
const server = http.createServer({ keepAliveTimeout: 65_000, ...(hwm ? { highWaterMark: hwm } : {}) }, handler);
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
