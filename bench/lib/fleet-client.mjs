// Fleet burst: for each sidecar URL, open `perSidecar` keep-alive connections and warm the sidecar's forwarding path
// through WARM_PATH (a route with a static key: no token is asked for), then send `perSidecar` requests to PATH on
// each sidecar at once, with no token anywhere yet.
// argv: PATH WARM_PATH PER_SIDECAR URL...   Prints {"done":true,"results":[{sidecar, ms, status}]}.
import { Pool } from 'undici';

const [path, warmPath, perArg, ...urls] = process.argv.slice(2);
const per = Number(perArg);
const pools = urls.map((u) => new Pool(u, { connections: per, pipelining: 1 }));
for (let round = 0; round < 3; round++) {
  await Promise.all(
    pools.flatMap((p) =>
      Array.from({ length: per }, async () => {
        const r = await p.request({ path: warmPath, method: 'GET' });
        await r.body.dump();
      }),
    ),
  );
}
await new Promise((r) => setTimeout(r, 100));
const results = [];
const all = [];
for (let s = 0; s < pools.length; s++) {
  for (let i = 0; i < per; i++) {
    const t0 = performance.now();
    all.push(
      pools[s].request({ path, method: 'GET' }).then(
        async (r) => {
          await r.body.dump();
          results.push({ sidecar: s, ms: performance.now() - t0, status: r.statusCode });
        },
        () => results.push({ sidecar: s, ms: performance.now() - t0, status: 0 }),
      ),
    );
  }
}
await Promise.all(all);
process.stdout.write(`${JSON.stringify({ done: true, results })}\n`);
await Promise.all(pools.map((p) => p.close()));
