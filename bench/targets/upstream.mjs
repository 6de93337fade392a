// The upstream every target forwards to: a fast node:http server with canned answers, in its own process.
//   GET  …/small  → 54 B      GET …/large → 64 KiB      POST (any path) → reads the body, answers 54 B
// Prints {"ready":true,"port":N} once listening on 127.0.0.1 (port 0 = a free one).
import http from 'node:http';

const small = Buffer.alloc(54, 'a');
const large = Buffer.alloc(64 * 1024, 'b');
const hdr = (n) => ({ 'content-type': 'application/octet-stream', 'content-length': String(n) });
const smallHeaders = hdr(small.length);
const largeHeaders = hdr(large.length);

const server = http.createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
  if (req.method === 'POST' || req.method === 'PUT') {
    let n = 0;
    req.on('data', (c) => (n += c.length));
    req.on('end', () => {
      res.writeHead(200, smallHeaders);
      res.end(small);
    });
    return;
  }
  const big = req.url.endsWith('/large');
  res.writeHead(200, big ? largeHeaders : smallHeaders);
  res.end(big ? large : small);
});
server.headersTimeout = 60_000;
server.requestTimeout = 0;
server.maxRequestsPerSocket = 0;
// A deep accept queue: the fleet test has 16 sidecars open 50 upstream connections each at once; with Node's default
// backlog (511) the overflow's SYNs are dropped and retried after 1 s, which would be charged to the sidecars.
server.listen({ port: Number(process.env.PORT ?? 0), host: '127.0.0.1', backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
