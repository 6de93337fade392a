/** Operating it: metrics equal counted events, the admin API, audit events, hot reload under load, readiness. */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Agent, request } from 'undici';
import { isLoopbackAddress } from '../../src/admin/api.js';
import { loadConfigText } from '../../src/config/load.js';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { createLogger } from '../../src/log.js';
import { Sidecar } from '../../src/sidecar.js';
import { fingerprintOf } from '../../src/core/token.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { startSidecarProcess, type SidecarProcess } from '../helpers/sidecar-process.js';
import { waitUntil } from '../helpers/wait.js';
import { recordLines } from '../helpers/log-capture.js';

const SECRET = `s3cr3t-${randomBytes(6).toString('hex')}`;
const agent = new Agent({ connections: 32 });
let idp: FakeIdp;
let vendor: EchoVendor;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  idp = await startFakeIdp({ clients: { ops: SECRET, 'ops-2': `${SECRET}-rotated` }, defaultExpiresInS: 600 });
  vendor = await startEchoVendor({ acceptToken: (t) => idp.isValid(t) });
});
afterAll(async () => {
  await Promise.all([idp.close(), vendor.close(), agent.close()]);
});
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()));
  idp.setBehavior({ kind: 'token' });
});

function routeYaml(opts: { name?: string; upstream?: string; clientId?: string; secret?: string; warm?: boolean } = {}): string {
  return `
  - name: ${opts.name ?? 'pix'}
    match: { pathPrefix: /pix }
    upstream: ${opts.upstream ?? `${vendor.url}/v2`}
    warm: ${opts.warm ?? false}
    auth:
      type: oauth2
      tokenUrl: ${idp.url}
      clientId: ${opts.clientId ?? 'ops'}
      clientSecret: ${opts.secret ?? SECRET}`;
}

async function inProcess(routes: string, lines: string[]): Promise<Sidecar> {
  const loaded = await loadConfigText(`version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:${routes}\n`);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const log = createLogger({ level: 'debug', destination: new Writable({ write: (c: Buffer, _e, done) => (lines.push(c.toString()), recordLines(c.toString()), done()) }) });
  const sidecar = await Sidecar.start({ config: loaded.config, log });
  cleanups.push(() => sidecar.stop(100));
  return sidecar;
}

async function call(base: string, path: string, method = 'GET'): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  const res = await request(`${base}${path}`, { method, dispatcher: agent });
  return { status: res.statusCode, body: await res.body.text(), headers: res.headers };
}

/** An RFC 9457 answer with its status from the one code table, named by `x-token-sidecar-error`. */
function expectProblem(answer: { status: number; body: string; headers: Record<string, unknown> }, code: string, status: number): Record<string, unknown> {
  expect({ status: answer.status, code: answer.headers['x-token-sidecar-error'] }, answer.body).toEqual({ status, code });
  expect(answer.headers['content-type']).toBe('application/problem+json');
  const body = JSON.parse(answer.body) as Record<string, unknown>;
  expect(body).toMatchObject({ type: `urn:token-sidecar:error:${code}`, status, code });
  expect(typeof body['title']).toBe('string');
  expect(typeof body['detail']).toBe('string');
  return body;
}

/** `name{labels} value` → value, from Prometheus text. */
function metric(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (want.every((w) => line.includes(w))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

describe('metrics and admin API (one pod)', () => {
  it('metric values equal counted events, and no label or log line carries a token or a secret', async () => {
    const lines: string[] = [];
    const sidecar = await inProcess(routeYaml(), lines);
    const before = idp.calls;
    for (let i = 0; i < 20; i++) expect((await call(sidecar.proxyUrl, `/pix/cob/${i}`)).status).toBe(200);
    vendor.unauthorizedNext(1);
    expect((await call(sidecar.proxyUrl, '/pix/cob/401')).status).toBe(200); // one 401, one refresh, one replay
    expect((await call(sidecar.proxyUrl, '/nowhere')).status).toBe(404);
    idp.setBehavior({ kind: 'status', status: 503, retryAfter: '1' });
    // The admin API takes its status from the one code table: TOKEN_UNAVAILABLE is 503 with Retry-After.
    const refused = await call(sidecar.adminUrl, '/v1/routes/pix/refresh', 'POST');
    expect(expectProblem(refused, 'TOKEN_UNAVAILABLE', 503)).toMatchObject({ route: 'pix' });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    const text = (await call(sidecar.adminUrl, '/metrics')).body;
    const success = idp.calls - before - 1;
    expect(metric(text, 'token_sidecar_token_fetches_total', { route: 'pix', result: 'success' })).toBe(success);
    expect(metric(text, 'token_sidecar_token_fetches_total', { route: 'pix', result: 'unavailable' })).toBe(1);
    expect(metric(text, 'token_sidecar_requests_total', { route: 'pix', code: '200' })).toBe(21);
    expect(metric(text, 'token_sidecar_requests_total', { route: 'none', code: '404' })).toBe(1);
    expect(metric(text, 'token_sidecar_upstream_unauthorized_total', { route: 'pix', replayed: 'true' })).toBe(1);
    expect(metric(text, 'token_sidecar_request_duration_seconds_count', { route: 'pix' })).toBe(21);
    expect(metric(text, 'token_sidecar_token_cache_lookups_total', { route: 'pix', layer: 'memory', result: 'hit' })).toBeGreaterThanOrEqual(19);
    expect(metric(text, 'token_sidecar_token_expiry_seconds', { route: 'pix' })).toBeGreaterThan(500);
    expect(metric(text, 'token_sidecar_store_up')).toBe(1);
    expect(text).toContain('process_cpu_user_seconds_total');
    for (const secret of [...idp.issued, SECRET]) {
      expect(text).not.toContain(secret);
      expect(lines.join('')).not.toContain(secret);
    }
    // Audit events name the pod and the token by fingerprint.
    const fetched = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['event'] === 'token.fetched');
    expect(fetched[0]).toMatchObject({ route: 'pix', grant: 'client_credentials', fingerprint: fingerprintOf(idp.issued[0] ?? '') });
    expect(typeof fetched[0]?.['pod']).toBe('string');
    expect(lines.some((l) => l.includes('"event":"token.invalidated"'))).toBe(true);
    expect(lines.some((l) => l.includes('"event":"token.fetch_failed"'))).toBe(true);
  });

  it('GET /v1/routes shows token state; POST refresh gets a new token; DELETE token revokes it', async () => {
    const sidecar = await inProcess(routeYaml(), []);
    expect((await call(sidecar.proxyUrl, '/pix/x')).status).toBe(200);
    const listed = JSON.parse((await call(sidecar.adminUrl, '/v1/routes')).body) as { routes: { name: string; token: { fingerprint: string; source: string; expiresAt: string } }[] };
    expect(listed.routes[0]).toMatchObject({ name: 'pix', token: { fingerprint: fingerprintOf(idp.lastToken() ?? ''), source: 'fetched' } });
    const calls = idp.calls;
    const refreshed = JSON.parse((await call(sidecar.adminUrl, '/v1/routes/pix/refresh', 'POST')).body) as { fingerprint: string };
    expect(idp.calls).toBe(calls + 1);
    expect(refreshed.fingerprint).toBe(fingerprintOf(idp.lastToken() ?? ''));
    expect((await call(sidecar.adminUrl, '/v1/routes/pix/refresh', 'GET')).status).toBe(405);
    expect((await call(sidecar.adminUrl, '/v1/routes/nope/refresh', 'POST')).status).toBe(404);
    const revoked = JSON.parse((await call(sidecar.adminUrl, '/v1/routes/pix/token', 'DELETE')).body) as { fingerprint: string };
    expect(revoked.fingerprint).toBe(refreshed.fingerprint);
    expect((await call(sidecar.proxyUrl, '/pix/y')).status).toBe(200);
    expect(idp.calls).toBe(calls + 2);
  });

  it('admin API failures are problem+json with the status of the one code table', async () => {
    // pix works, refused has the wrong secret (the endpoint answers invalid_client), key is a static credential.
    const routes = `${routeYaml()}${routeYaml({ name: 'refused', secret: `${SECRET}-wrong` }).replace('pathPrefix: /pix', 'pathPrefix: /refused')}
  - name: key
    match: { pathPrefix: /key }
    upstream: ${vendor.url}/v2
    auth: { type: static, value: static-key-value }`;
    const sidecar = await inProcess(routes, []);
    const admin = sidecar.adminUrl;

    expect(expectProblem(await call(admin, '/v1/routes/refused/refresh', 'POST'), 'TOKEN_REJECTED', 502)).toMatchObject({ route: 'refused' });
    expectProblem(await call(admin, '/v1/routes/nope/refresh', 'POST'), 'ROUTE_NOT_FOUND', 404);
    expectProblem(await call(admin, '/v1/routes/nope/token', 'DELETE'), 'ROUTE_NOT_FOUND', 404);
    const wrongMethod = await call(admin, '/v1/routes/pix/refresh', 'GET');
    expectProblem(wrongMethod, 'METHOD_NOT_ALLOWED', 405);
    expect(wrongMethod.headers['allow']).toBe('POST');
    const wrongRevoke = await call(admin, '/v1/routes/pix/token', 'POST');
    expectProblem(wrongRevoke, 'METHOD_NOT_ALLOWED', 405);
    expect(wrongRevoke.headers['allow']).toBe('DELETE');
    expect(expectProblem(await call(admin, '/v1/routes/key/refresh', 'POST'), 'STATIC_CREDENTIAL', 409)).toMatchObject({ route: 'key' });
    expectProblem(await call(admin, '/v1/routes/key/token', 'DELETE'), 'STATIC_CREDENTIAL', 409);
    expectProblem(await call(admin, '/v1/nope'), 'NOT_FOUND', 404);
    expectProblem(await call(admin, '/v1/routes/pix/refresh/extra', 'POST'), 'NOT_FOUND', 404);
    // The working route still refreshes: 200 with JSON, not a problem.
    const ok = await call(admin, '/v1/routes/pix/refresh', 'POST');
    expect(ok.status).toBe(200);
    expect(ok.headers['x-token-sidecar-error']).toBeUndefined();
    expect(JSON.parse(ok.body)).toMatchObject({ route: 'pix', action: 'refreshed' });
  });

  it('x-request-id is propagated (or made and returned); W3C traceparent passes through untouched', async () => {
    const lines: string[] = [];
    const sidecar = await inProcess(routeYaml(), lines);
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    let res = await request(`${sidecar.proxyUrl}/pix/t`, { dispatcher: agent, headers: { 'x-request-id': 'app-req-1', traceparent, tracestate: 'rojo=00f067aa0ba902b7' } });
    await res.body.text();
    let seen = vendor.requests.at(-1);
    expect(seen?.headers['x-request-id']).toBe('app-req-1');
    expect(seen?.headers['traceparent']).toBe(traceparent);
    expect(seen?.headers['tracestate']).toBe('rojo=00f067aa0ba902b7');
    res = await request(`${sidecar.proxyUrl}/pix/t`, { dispatcher: agent });
    await res.body.text();
    seen = vendor.requests.at(-1);
    const made = res.headers['x-request-id'];
    expect(typeof made).toBe('string');
    expect(seen?.headers['x-request-id']).toBe(made);
    await waitUntil(() => lines.some((l) => l.includes(`"requestId":"${String(made)}"`)), 2_000, 10, 'the request log line');
    expect(lines.some((l) => l.includes('"requestId":"app-req-1"'))).toBe(true);
  });

  it('route actions are for loopback callers only', () => {
    for (const a of ['127.0.0.1', '127.3.2.1', '::1', '::ffff:127.0.0.1']) expect(isLoopbackAddress(a), a).toBe(true);
    for (const a of ['10.0.0.7', '::ffff:10.0.0.7', '192.168.1.1', 'fe80::1', undefined]) expect(isLoopbackAddress(a), String(a)).toBe(false);
  });

  it('readiness waits for warm routes, recovers without traffic, and liveness never depends on the token endpoint', async () => {
    idp.setBehavior({ kind: 'status', status: 503, retryAfter: '1' });
    const sidecar = await inProcess(routeYaml({ warm: true }), []);
    expect((await call(sidecar.adminUrl, '/healthz')).status).toBe(200);
    const notReady = await call(sidecar.adminUrl, '/readyz');
    expect(notReady.status).toBe(503);
    expect(JSON.parse(notReady.body)).toMatchObject({ checks: { warmRoutes: 'failing' } });
    idp.setBehavior({ kind: 'token' });
    await waitUntil(async () => (await call(sidecar.adminUrl, '/readyz')).status === 200, 5_000, 50, 'readiness after the token endpoint recovers');
    expect((await call(sidecar.adminUrl, '/healthz')).status).toBe(200);
  });
});

describe('shared store', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis.stop();
  });

  it('admin DELETE token on pod A makes pod B fetch a new token on its next request', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ops-'));
    const file = join(dir, 'routes.yaml');
    await writeFile(file, `version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nstore:\n  type: redis\n  redis: { url: "${redis.url}", keyPrefix: "ops${randomBytes(3).toString('hex')}:" }\nroutes:${routeYaml()}\n`);
    const [a, b] = await Promise.all([startSidecarProcess(file), startSidecarProcess(file)]);
    cleanups.push(() => a.kill('SIGKILL'), () => b.kill('SIGKILL'));
    const ready = async (p: SidecarProcess) => (JSON.parse((await call(p.adminUrl, '/readyz')).body) as { checks: { store: string } }).checks.store === 'ok';
    await waitUntil(async () => (await ready(a)) && (await ready(b)), 10_000, 50, 'store connections');
    expect((await call(a.proxyUrl, '/pix/1')).status).toBe(200);
    expect((await call(b.proxyUrl, '/pix/1')).status).toBe(200);
    const calls = idp.calls;
    const old = idp.lastToken() ?? '';
    expect(calls).toBeGreaterThan(0);
    const revoked = JSON.parse((await call(a.adminUrl, '/v1/routes/pix/token', 'DELETE')).body) as { fingerprint: string };
    expect(revoked.fingerprint).toBe(fingerprintOf(old));
    await new Promise((r) => setTimeout(r, 50));
    const n = vendor.count;
    expect((await call(b.proxyUrl, '/pix/2')).status).toBe(200);
    expect(idp.calls).toBe(calls + 1);
    expect(vendor.requests[n]?.authorization).toBe(`Bearer ${idp.lastToken() ?? ''}`);
    expect(idp.lastToken()).not.toBe(old);
  });
});

describe('graceful shutdown', () => {
  it('SIGTERM: /readyz turns 503, in-flight requests finish, new connections are refused, exit 0', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'drain-'));
    const file = join(dir, 'routes.yaml');
    await writeFile(file, `version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\ndrainTimeout: 5s\nroutes:${routeYaml()}\n`);
    const pod = await startSidecarProcess(file);
    cleanups.push(() => pod.kill('SIGKILL'));
    expect((await call(pod.proxyUrl, '/pix/warm')).status).toBe(200);
    const inflight = call(pod.proxyUrl, '/pix/__slow/800');
    await waitUntil(() => vendor.requests.some((r) => r.target.includes('__slow/800')), 2_000, 5, 'the slow request at the vendor');
    const exited = pod.kill('SIGTERM');
    await waitUntil(() => pod.lines.some((l) => l.includes('"event":"draining"')), 2_000, 5, 'draining');
    const fresh = new Agent();
    const ready = await request(`${pod.adminUrl}/readyz`, { dispatcher: fresh });
    expect(ready.statusCode).toBe(503);
    expect(JSON.parse(await ready.body.text())).toMatchObject({ checks: { draining: 'failing' } });
    await expect(request(`${pod.proxyUrl}/pix/after`, { dispatcher: fresh })).rejects.toThrow();
    await fresh.close();
    expect((await inflight).status).toBe(200);
    expect(await exited).toBe(0);
    expect(pod.lines.some((l) => l.includes('"event":"stopped"'))).toBe(true);
  });
});

describe('hot reload', () => {
  it('a new upstream and a rotated credential under load: 0 failed requests, the new token after the swap, a broken file keeps the last good config', async () => {
    const vendor2 = await startEchoVendor({ acceptToken: (t) => idp.isValid(t) });
    cleanups.push(() => vendor2.close());
    const dir = await mkdtemp(join(tmpdir(), 'reload-'));
    const file = join(dir, 'routes.yaml');
    const secretFile = join(dir, 'client-secret');
    await writeFile(secretFile, SECRET);
    const config = (upstream: string, clientId: string) =>
      `version: 1\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:${routeYaml({ upstream, clientId }).replace(`clientSecret: ${SECRET}`, `clientSecret: { fromFile: ${secretFile} }`)}\n`;
    // Writes are atomic renames, as a ConfigMap update is.
    const writeAtomically = async (path: string, text: string) => {
      await writeFile(`${path}.tmp`, text);
      await rename(`${path}.tmp`, path);
    };
    await writeAtomically(file, config(`${vendor.url}/v2`, 'ops'));
    const pod = await startSidecarProcess(file);
    cleanups.push(() => pod.kill('SIGKILL'));
    let failures = 0;
    let total = 0;
    let stop = false;
    const load = Promise.all(
      Array.from({ length: 8 }, async () => {
        while (!stop) {
          const r = await call(pod.proxyUrl, '/pix/cob/1');
          total++;
          if (r.status !== 200) failures++;
        }
      }),
    );
    await waitUntil(() => total > 200, 5_000, 10, 'load running');
    const v2Before = vendor2.count;
    const swapAt = performance.now();
    await writeAtomically(secretFile, `${SECRET}-rotated`);
    await writeAtomically(file, config(`${vendor2.url}/v2`, 'ops-2'));
    await waitUntil(() => vendor2.count > v2Before, 5_000, 10, 'traffic on the new upstream');
    const swapMs = performance.now() - swapAt;
    const totalAtSwap = total;
    // Broken file: reported, and the last good config keeps serving.
    await writeAtomically(file, 'version: 1\nroutes: [ {name: BAD');
    await waitUntil(() => pod.lines.some((l) => l.includes('config.reload_failed')), 5_000, 20, 'the broken file reported');
    const v2AfterBroken = vendor2.count;
    await waitUntil(() => vendor2.count > v2AfterBroken + 100, 5_000, 10, 'still serving on the last good config');
    stop = true;
    await load;
    expect(failures).toBe(0);
    // The last token request authenticated as the new client with the rotated secret.
    const basic = String(idp.requests.at(-1)?.headers.authorization ?? '').replace(/^Basic /, '');
    expect(Buffer.from(basic, 'base64').toString()).toBe(`ops-2:${SECRET}-rotated`);
    // Every request on the new upstream carried a token issued to the new client.
    const newTokens = new Set(vendor2.requests.map((r) => r.authorization));
    expect(newTokens.size).toBe(1);
    expect([...newTokens][0]).toBe(`Bearer ${idp.lastToken() ?? ''}`);
    console.log(`reload under load: ${total} requests, ${failures} failed; new upstream in use ${swapMs.toFixed(0)} ms after the write (${totalAtSwap} requests before); broken file: still serving`);
  });
});
