// http-proxy or http-proxy-3 (PKG) with a keep-alive agent and a static Authorization header.
// Env: PKG (http-proxy | http-proxy-3), UPSTREAM, PREFIX (/bench), PORT (0), BENCH_DEPS (extra node_modules dir).
import http from 'node:http';
import { loadPeer } from '../lib/peers.mjs';

const PKG = process.env.PKG ?? 'http-proxy';
const UPSTREAM = process.env.UPSTREAM;
const PREFIX = process.env.PREFIX ?? '/bench';
const mod = await loadPeer(PKG);
const createProxyServer = mod.createProxyServer ?? mod.default?.createProxyServer ?? mod.default?.createProxy;
const agent = new http.Agent({ keepAlive: true, keepAliveMsecs: 30_000 });
const proxy = createProxyServer({ target: UPSTREAM, agent, headers: { authorization: 'Bearer static-bench-token-0123456789abcdef' } });
proxy.on('error', (_err, _req, res) => {
  if (res && typeof res.writeHead === 'function' && !res.headersSent) {
    res.writeHead(502);
    res.end();
  } else res?.destroy?.();
});
const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  if (req.url.startsWith(PREFIX)) req.url = req.url.slice(PREFIX.length) || '/';
  proxy.web(req, res);
});
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGUSR2', () => {}); // the tail probe's trace signal: nothing to report here
