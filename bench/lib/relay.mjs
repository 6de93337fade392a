// The latency relay (dist/dev/latency-relay.js) as its own process: 127.0.0.1:<port> → HOST:PORT, every chunk
// delayed by the one-way delay in each direction (a round trip costs 2 × delay). Stands in for a busy Redis, a
// failover or a cross-zone hop. Control listener:
//   POST /delay?ms=80    one-way delay from now on        GET /stats → {"delayMs","connections","accepted"}
// argv: HOST PORT [DIST_DIR]. Prints {"ready":true,"port":N,"control":…}.
import http from 'node:http';
import { resolve, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [host, port, distArg] = process.argv.slice(2);
const dist = resolve(distArg ?? join(import.meta.dirname, '..', '..', 'dist'));
const { startLatencyRelay } = await import(pathToFileURL(join(dist, 'dev', 'latency-relay.js')).href);

const relay = await startLatencyRelay({ host, port: Number(port), delayMs: 0 });
const control = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'POST' && url.pathname === '/delay') relay.setDelay(Number(url.searchParams.get('ms') ?? 0));
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ delayMs: relay.delayMs, connections: relay.connections, accepted: relay.accepted }));
});
control.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port: relay.port, control: `http://127.0.0.1:${control.address().port}` })}\n`);
});
process.on('SIGTERM', () => relay.close().finally(() => process.exit(0)));
