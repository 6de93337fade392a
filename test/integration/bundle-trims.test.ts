/**
 * What scripts/bundle-trims.mjs leaves out of the shipped bundle, or loads late, keeps every behaviour: node:http2 is
 * loaded only when an `http2` route is first used (and that route still speaks h2 with the token), and prom-client
 * without its cluster aggregator and Pushgateway still serves the process metrics. (zod's English-only messages are
 * what test/integration/cli.test.ts reads from `validate`.)
 */
import { createSecureServer, type Http2SecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { makeCerts } from '../helpers/certs.js';
import { startSidecarProcess, writeConfig, type SidecarProcess } from '../helpers/sidecar-process.js';
import { waitUntil } from '../helpers/wait.js';

const PROBE = resolve(import.meta.dirname, '../fixtures/builtins-probe.mjs');

describe('the shipped bundle loads node:http2 only when a route uses it', () => {
  let idp: FakeIdp;
  let vendor: Http2SecureServer;
  let sidecar: SidecarProcess;
  const seenAuth: (string | undefined)[] = [];

  /** The built-in modules the sidecar process has loaded, from the preloaded probe. */
  async function builtins(): Promise<string[]> {
    const from = sidecar.lines.length;
    process.kill(sidecar.pid, 'SIGUSR2');
    const line = await waitUntil(() => sidecar.lines.slice(from).find((l) => l.includes('"event":"probe.builtins"')), 2_000, 20, 'the probe');
    return (JSON.parse(line) as { builtins: string[] }).builtins;
  }

  beforeAll(async () => {
    const certs = await makeCerts();
    idp = await startFakeIdp({ clients: { c: 's3cret-trims' } });
    vendor = createSecureServer({ key: certs.key, cert: certs.cert }, (req, res) => {
      seenAuth.push(req.headers.authorization);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ httpVersion: req.httpVersion, path: req.url }));
    });
    await new Promise<void>((r) => vendor.listen(0, '127.0.0.1', r));
    const port = (vendor.address() as AddressInfo).port;
    const file = await writeConfig(`version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: h2
    match: { pathPrefix: /h2 }
    upstream: https://localhost:${port}/v1
    upstreamTls: { ca: { fromFile: ${certs.caFile} } }
    http2: true
    auth: { type: oauth2, tokenUrl: ${idp.url}, clientId: c, clientSecret: s3cret-trims }
`);
    sidecar = await startSidecarProcess(file, { NODE_OPTIONS: `--import ${PROBE}` });
  });

  afterAll(async () => {
    await sidecar?.kill();
    await Promise.allSettled([idp?.close(), new Promise((r) => vendor?.close(r))]);
  });

  it('starts without node:http2, then loads it for the first h2 request, which carries the token over h2', async () => {
    const before = await builtins();
    expect(before).toContain('http'); // the probe sees what is loaded
    expect(before).not.toContain('http2');

    const res = await fetch(`${sidecar.proxyUrl}/h2/items/1`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ httpVersion: '2.0', path: '/v1/items/1' });
    expect(seenAuth).toEqual([`Bearer ${idp.lastToken()}`]);

    expect(await builtins()).toContain('http2');
  });

  it('serves the process metrics from prom-client without its cluster and Pushgateway parts', async () => {
    const text = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds']) {
      expect(text).toMatch(new RegExp(`^${name} \\d`, 'm'));
    }
  });
});
