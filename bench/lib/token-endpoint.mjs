// A token endpoint for the slow-store and cluster parts: the project's dev fake IdP (dist/dev/fake-idp.js,
// demo-client/demo-secret) with a control listener that also sets the tokens' lifetime and tells calls apart by
// scope (each route of the slow-store fleet asks for its own scope, so every case counts its own calls).
//   GET  /calls          → {"calls":N,"byScope":{"scope":[arrival ms (Date.now()), …]}}
//   POST /delay?ms=300   answer delay for every call
//   POST /expires?s=6    expires_in of the tokens issued from now on (default 3600)
// argv: [DIST_DIR] (default ../../dist). Prints {"ready":true,"tokenUrl":…,"control":…}.
import http from 'node:http';
import { resolve, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const dist = resolve(process.argv[2] ?? join(import.meta.dirname, '..', '..', 'dist'));
const { startFakeIdp } = await import(pathToFileURL(join(dist, 'dev', 'fake-idp.js')).href);

const idp = await startFakeIdp({ defaultExpiresInS: 3600 });
const control = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'POST' && url.pathname === '/delay') idp.setDelay(Number(url.searchParams.get('ms') ?? 0));
  if (req.method === 'POST' && url.pathname === '/expires') idp.setBehavior({ kind: 'token', expiresIn: Number(url.searchParams.get('s') ?? 3600) });
  const byScope = {};
  for (const r of idp.requests) (byScope[r.form.scope ?? ''] ??= []).push(r.atMs);
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ calls: idp.calls, byScope }));
});
control.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ ready: true, tokenUrl: idp.url, control: `http://127.0.0.1:${control.address().port}` })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
