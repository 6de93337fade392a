// The TLS upstream of the HTTP/2 part: the same canned answers as upstream.mjs, over TLS, speaking h2 and
// HTTP/1.1 (ALPN picks). KEY / CERT: PEM files. GET /__stats answers {"h2Sessions":N,"h1Connections":M} (since start).
// Prints {"ready":true,"port":N} once listening on 127.0.0.1.
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';

const small = Buffer.alloc(54, 'a');
const large = Buffer.alloc(64 * 1024, 'b');
const hdr = (n) => ({ 'content-type': 'application/octet-stream', 'content-length': String(n) });
let h2Sessions = 0;
let h1Connections = 0;

const server = http2.createSecureServer({ key: readFileSync(process.env.KEY), cert: readFileSync(process.env.CERT), allowHTTP1: true }, (req, res) => {
  if (req.url === '/__stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ h2Sessions, h1Connections }));
    return;
  }
  if (req.method === 'POST' || req.method === 'PUT') {
    req.on('data', () => undefined);
    req.on('end', () => {
      res.writeHead(200, hdr(small.length));
      res.end(small);
    });
    return;
  }
  const big = req.url.endsWith('/large');
  res.writeHead(200, hdr(big ? large.length : small.length));
  res.end(big ? large : small);
});
server.on('session', () => h2Sessions++);
server.on('secureConnection', (socket) => {
  if (socket.alpnProtocol !== 'h2') h1Connections++;
});
server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ ready: true, port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
