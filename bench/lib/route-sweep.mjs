// Route-count sweep (issue 19): what 1, 100 and 1 000 OAuth routes cost one sidecar. Each route has its own scope,
// so its own token identity and store key. Per N: process start to /readyz 200 (median of 3), idle RSS, wrk at 32
// connections on the middle and the last route (req/s, CPU-s per 10k requests, p99), SIGHUP-to-reloaded time
// (median of 3; SIGHUP skips the 1 s poll of src/config/watch.ts, so this is the reload itself) and RSS after it.
// Idle RSS is read twice: 1 s and 12 s after ready (V8's memory reducer may have returned the config load's garbage).
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, rssSampler, sleep, startProcess, treeCpu, treePids, treeRss } from './procs.mjs';
import { runWrk } from './wrk.mjs';

const SETTLE_MS = 12_000;
const pad = (i) => String(i).padStart(4, '0');

/** routes.yaml with `n` OAuth routes /r0000 … /r(n-1), one scope each; `tag` changes every route's scope on reload. */
function sweepConfig({ n, upstream, tokenUrl, listen, admin, tag = 'a' }) {
  const lines = [`version: 1`, `listen: ${listen}`, `admin: ${admin}`, `store:`, `  type: memory`, `routes:`];
  for (let i = 0; i < n; i++) {
    lines.push(
      `  - name: r${pad(i)}`,
      `    match: { pathPrefix: /r${pad(i)} }`,
      `    upstream: ${upstream}`,
      `    auth: { type: oauth2, tokenUrl: ${tokenUrl}, clientId: demo-client, clientSecret: { fromEnv: BENCH_CLIENT_SECRET }, scopes: [s${pad(i)}${tag}] }`,
    );
  }
  return `${lines.join('\n')}\n`;
}

const countEvents = (file, event) => readFileSync(file, 'utf8').split('\n').filter((l) => l.includes(`"event":"${event}"`)).length;

/**
 * ctx: { dir, upstream (origin), tokenUrl, entry, nodeArgs (the shipped flags), nodeEnv (the shipped environment), httpGet, waitFor, median, log, quick, seconds }.
 * Returns one row per N.
 */
export async function routeSweepPhase(ctx) {
  const { dir, upstream, tokenUrl, entry, nodeArgs, nodeEnv, httpGet, waitFor, median, log, quick, seconds } = ctx;
  const reps = quick ? 1 : 3; // starts per N, and reloads of the last one
  const out = [];
  for (const n of [1, 100, 1000]) {
    const row = { n, startMs: [], reloadMs: [] };
    let p;
    for (let i = 0; i < reps; i++) {
      const [lp, ap] = [await freePort(), await freePort()];
      const name = `routes-${n}-${i}`;
      const cfgFile = join(dir, `${name}.yaml`);
      const logFile = join(dir, `${name}.log`);
      writeFileSync(cfgFile, sweepConfig({ n, upstream, tokenUrl, listen: `127.0.0.1:${lp}`, admin: `127.0.0.1:${ap}` }));
      writeFileSync(logFile, '');
      const t0 = performance.now();
      p = startProcess(name, 'node', [...nodeArgs, entry, 'start', '--config', cfgFile], { cpus: '1', cwd: dir, stdoutFile: logFile, env: { LOG_FORMAT: 'json', ...nodeEnv, BENCH_CLIENT_SECRET: 'demo-secret' } });
      await waitFor(async () => (await httpGet(`http://127.0.0.1:${ap}/readyz`)).status === 200, 30_000, `${name} ready`);
      row.startMs.push(performance.now() - t0);
      if (i < reps - 1) {
        await p.stop();
        continue;
      }
      // The last start stays up for the rest.
      const proxy = `http://127.0.0.1:${lp}`;
      const pids = treePids(p.pid);
      // RSS 1 s after ready still holds the garbage of the config load (the YAML document and zod's work: ~20 MB of
      // heap at 1 000 routes). V8's memory reducer may give it back seconds later, or not: both readings are reported.
      await sleep(1000);
      row.idleRss = treeRss(pids);
      await sleep(SETTLE_MS - 1000);
      row.settledRss = treeRss(pids);
      const picks = [...new Set([Math.floor((n - 1) / 2), n - 1])];
      row.load = [];
      for (const r of picks) {
        const url = `${proxy}/r${pad(r)}/small`;
        const first = await httpGet(url); // the route's first token fetch, outside the measurement
        if (first.status !== 200) throw new Error(`route r${pad(r)}: ${first.status} ${first.text.slice(0, 200)}`);
        await runWrk({ url, connections: 32, seconds: 1 });
        const cpu0 = treeCpu(pids);
        const sampler = rssSampler(pids, 250);
        const w = await runWrk({ url, connections: 32, seconds });
        const peak = sampler.stop();
        const cpu = treeCpu(pids) - cpu0;
        truncateSync(logFile, 0); // the per-request log would fill the disk and slow the reload's event count
        row.load.push({ route: r, which: r === n - 1 ? 'last' : 'middle', rps: w.rps, p99Ms: w.p99Ms, cpuPer10k: (cpu / w.requests) * 1e4, peakRss: peak, errors: w.errors });
        log(`  routes ${n}: r${pad(r)} ${w.rps.toFixed(0)} req/s p99 ${w.p99Ms.toFixed(2)} ms`);
      }
      for (let k = 0; k < reps; k++) {
        writeFileSync(cfgFile, sweepConfig({ n, upstream, tokenUrl, listen: `127.0.0.1:${lp}`, admin: `127.0.0.1:${ap}`, tag: `b${k}` }));
        const before = countEvents(logFile, 'config.reloaded');
        const t1 = performance.now();
        process.kill(p.pid, 'SIGHUP');
        await waitFor(() => countEvents(logFile, 'config.reloaded') > before, 30_000, `${name} reload`, 5);
        row.reloadMs.push(performance.now() - t1);
      }
      await sleep(1000);
      row.rssAfterReload = treeRss(pids);
      const after = await httpGet(`${proxy}/r${pad(n - 1)}/small`);
      row.afterReloadStatus = after.status;
      await p.stop();
    }
    row.startMedianMs = median(row.startMs);
    row.reloadMedianMs = median(row.reloadMs);
    log(`routes ${n}: start ${row.startMs.map((t) => t.toFixed(0)).join(', ')} ms, reload ${row.reloadMs.map((t) => t.toFixed(0)).join(', ')} ms, idle ${(row.idleRss / 1048576).toFixed(0)} MB, settled ${(row.settledRss / 1048576).toFixed(0)} MB`);
    out.push(row);
  }
  return out;
}

/** Markdown for the sweep; fmt: { f0, f2, mb }. */
export function routeSweepReport(rows, { f0, f2, mb }) {
  if (!rows?.length) return [];
  const L = [];
  L.push('## Route count (issue 19)', '');
  L.push('One sidecar (memory store, pinned to one CPU, shipped flags) with N OAuth routes, each its own scope (so its own token). wrk at 32 connections on the middle and the last route; reload = SIGHUP with every scope changed, to the `config.reloaded` log line. RSS is read 1 s after ready (the config load\'s garbage still held) and 12 s after (V8\'s memory reducer may or may not have returned it by then).', '');
  L.push('| routes | start to ready ms (median) | RSS 1 s / 12 s after ready MB | route | req/s | CPU-s per 10k | p99 ms | peak RSS MB | reload ms (median) | RSS after reloads MB |');
  L.push('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    for (const [i, l] of r.load.entries()) {
      const first = i === 0;
      L.push(
        `| ${first ? f0(r.n) : ''} | ${first ? f0(r.startMedianMs) : ''} | ${first ? `${mb(r.idleRss)} / ${mb(r.settledRss)}` : ''} | ${l.which} (r${pad(l.route)}) | ${f0(l.rps)} | ${f2(l.cpuPer10k)} | ${f2(l.p99Ms)} | ${mb(l.peakRss)} | ${first ? f0(r.reloadMedianMs) : ''} | ${first ? `${mb(r.rssAfterReload)}${r.afterReloadStatus === 200 ? '' : ` (then ${r.afterReloadStatus})`}` : ''} |`,
      );
    }
  }
  L.push('');
  return L;
}
