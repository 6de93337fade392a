// The token endpoint for the bench: the project's dev fake IdP (dist/dev/fake-idp.js, demo-client/demo-secret,
// 1 h tokens) plus a small control listener: GET /calls → {"calls":N}; POST /delay?ms=200 sets its answer delay.
// Prints {"ready":true,"tokenUrl":…,"control":…}.
import http from 'node:http';
import { startFakeIdp } from '../../dist/dev/fake-idp.js';

const idp = await startFakeIdp({ defaultExpiresInS: 3600 });
const control = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/delay' && req.method === 'POST') idp.setDelay(Number(url.searchParams.get('ms') ?? 0));
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ calls: idp.calls }));
});
control.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, tokenUrl: idp.url, control: `http://127.0.0.1:${control.address().port}` })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
