import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { generate } from 'selfsigned';
import { afterEach, describe, expect, it } from 'vitest';
import { startEchoVendor, vendorBytes } from '../../src/dev/echo-vendor.js';
import { OMIT, startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';

const open: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});
async function idpWith(opts?: Parameters<typeof startFakeIdp>[0]): Promise<FakeIdp> {
  const idp = await startFakeIdp(opts);
  open.push(idp);
  return idp;
}
async function vendorWith(opts?: Parameters<typeof startEchoVendor>[0]) {
  const vendor = await startEchoVendor(opts);
  open.push(vendor);
  return vendor;
}

/** application/x-www-form-urlencoded encoding of one value (space becomes '+'). */
const formEncode = (s: string): string => new URLSearchParams({ s }).toString().slice(2);
const basic = (id: string, secret: string): string =>
  `Basic ${Buffer.from(`${formEncode(id)}:${formEncode(secret)}`).toString('base64')}`;

function postToken(idp: FakeIdp, form: Record<string, string>, authorization?: string): Promise<Response> {
  return fetch(idp.url, {
    method: 'POST',
    headers: authorization ? { authorization } : {},
    body: new URLSearchParams({ grant_type: 'client_credentials', ...form }),
  });
}
const demoPost = { client_id: 'demo-client', client_secret: 'demo-secret' };

async function selfSignedLocalhost(): Promise<{ cert: string; key: string }> {
  const pems = await generate([{ name: 'commonName', value: '127.0.0.1' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  return { cert: pems.cert, key: pems.private };
}

function httpsJson(url: string, ca: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}) {
  return new Promise<{ status: number; json: Record<string, unknown> }>((resolve, reject) => {
    const req = https.request(url, { ca, method: init.method ?? 'GET', headers: init.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString()) }));
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

describe('fake IdP', () => {
  it('issues a token to a client_secret_basic client, undoing the form-encoding of id and secret', async () => {
    // ':' in the id and '+', ' ', '%' in the secret only survive if the IdP decodes per RFC 6749 §2.3.1.
    const idp = await idpWith({ clients: { 'svc a:1': 'p+ss w%rd:/é' } });
    const res = await postToken(idp, {}, basic('svc a:1', 'p+ss w%rd:/é'));
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toEqual({ access_token: expect.stringMatching(/^tsk_[A-Za-z0-9_-]{24}$/), token_type: 'Bearer', expires_in: 3600 });
    expect(idp.calls).toBe(1);
    expect(idp.requests[0]).toMatchObject({ clientAuth: 'basic', form: { grant_type: 'client_credentials' } });
    expect(idp.issued).toEqual([body.access_token]);
    expect(idp.lastToken()).toBe(body.access_token);
    expect(idp.isValid(String(body.access_token))).toBe(true);

    // The same credentials without form-encoding split at the wrong ':'.
    const raw = `Basic ${Buffer.from('svc a:1:p+ss w%rd:/é').toString('base64')}`;
    expect((await postToken(idp, {}, raw)).status).toBe(401);
  });

  it('issues a token to a client_secret_post client and echoes the requested scope; tokens are unique', async () => {
    const idp = await idpWith();
    const a = (await (await postToken(idp, { ...demoPost, scope: 'read write' })).json()) as Record<string, unknown>;
    const b = (await (await postToken(idp, demoPost)).json()) as Record<string, unknown>;
    expect(a).toMatchObject({ token_type: 'Bearer', scope: 'read write' });
    expect(b).not.toHaveProperty('scope');
    expect(a.access_token).not.toBe(b.access_token);
    expect(idp.requests.map((r) => r.clientAuth)).toEqual(['post', 'post']);
    expect(idp.requests[0]?.form).toEqual({ grant_type: 'client_credentials', ...demoPost, scope: 'read write' });
    expect(idp.issued).toEqual([a.access_token, b.access_token]);
  });

  it('rejects a wrong secret, an unknown client and no credentials with 401 invalid_client, counting each call', async () => {
    const idp = await idpWith();
    const attempts = [
      await postToken(idp, {}, basic('demo-client', 'wrong')),
      await postToken(idp, { client_id: 'demo-client', client_secret: 'wrong' }),
      await postToken(idp, { client_id: 'nobody', client_secret: 'demo-secret' }),
      await postToken(idp, {}),
    ];
    for (const res of attempts) {
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Basic');
      expect(await res.json()).toEqual({ error: 'invalid_client' });
    }
    expect(idp.requests.map((r) => r.clientAuth)).toEqual(['basic', 'post', 'post', 'none']);
    expect(idp.calls).toBe(4);
    expect(idp.issued).toEqual([]);
  });

  it('requires a form body with grant_type=client_credentials and answers 404 off the token path', async () => {
    const idp = await idpWith();
    const res = await postToken(idp, { ...demoPost, grant_type: 'password' });
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({ error: 'unsupported_grant_type' });
    const json = await fetch(idp.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'client_credentials', ...demoPost }),
    });
    expect([json.status, ((await json.json()) as Record<string, unknown>).error]).toEqual([400, 'invalid_request']);
    expect((await fetch(idp.url)).status).toBe(404);
    expect((await fetch(idp.url.replace('/oauth/token', '/other'), { method: 'POST' })).status).toBe(404);
    expect(idp.calls).toBe(2);
  });

  it('sends expires_in as the raw value given, and leaves it out for OMIT', async () => {
    const idp = await idpWith();
    idp.enqueue({ kind: 'token', expiresIn: OMIT }, { kind: 'token', expiresIn: '120' });
    const omitted = (await (await postToken(idp, demoPost)).json()) as Record<string, unknown>;
    const stringly = (await (await postToken(idp, demoPost)).json()) as Record<string, unknown>;
    expect(omitted).not.toHaveProperty('expires_in');
    expect(stringly.expires_in).toBe('120');
    expect(idp.isValid(String(omitted.access_token))).toBe(true); // 1 h fallback lifetime
  });

  it('plays enqueued behaviours once each, in order, then the default', async () => {
    const idp = await idpWith();
    idp.setBehavior({ kind: 'token', expiresIn: 60 });
    idp.enqueue(
      { kind: 'oauthError', status: 400, error: 'invalid_scope', description: 'nope' },
      { kind: 'status', status: 503, retryAfter: '2', body: '<html>busy</html>', contentType: 'text/html' },
    );
    const r1 = await postToken(idp, demoPost);
    expect(r1.status).toBe(400);
    expect(await r1.json()).toEqual({ error: 'invalid_scope', error_description: 'nope' });
    const r2 = await postToken(idp, demoPost);
    expect([r2.status, r2.headers.get('retry-after'), r2.headers.get('content-type')]).toEqual([503, '2', 'text/html']);
    expect(await r2.text()).toBe('<html>busy</html>');
    for (let i = 0; i < 2; i++) {
      const res = await postToken(idp, demoPost);
      expect(res.status).toBe(200);
      expect(((await res.json()) as Record<string, unknown>).expires_in).toBe(60);
    }
    expect(idp.calls).toBe(4);
    expect(idp.issued).toHaveLength(2);
  });

  it('delays answers by setDelay, unless the behaviour has its own delayMs', async () => {
    const idp = await idpWith();
    idp.setDelay(300);
    let t0 = performance.now();
    expect((await postToken(idp, demoPost)).status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(295);

    idp.enqueue({ kind: 'token', delayMs: 0 });
    t0 = performance.now();
    await postToken(idp, demoPost);
    expect(performance.now() - t0).toBeLessThan(250);
  });

  it('tracks validity: revoke, revokeAll, expiry and forged tokens', async () => {
    const idp = await idpWith();
    const get = async (): Promise<string> =>
      String(((await (await postToken(idp, demoPost)).json()) as Record<string, unknown>).access_token);
    const t1 = await get();
    const t2 = await get();
    expect([idp.isValid(t1), idp.isValid(t2), idp.isValid('tsk_AAAAAAAAAAAAAAAAAAAAAAAA')]).toEqual([true, true, false]);
    idp.revoke(t1);
    expect([idp.isValid(t1), idp.isValid(t2)]).toEqual([false, true]);
    idp.revokeAll();
    expect(idp.isValid(t2)).toBe(false);
    expect(idp.isValid(await get())).toBe(true); // revokeAll does not poison later tokens

    idp.enqueue({ kind: 'token', expiresIn: 0.1 });
    const short = await get();
    expect(idp.isValid(short)).toBe(true);
    await sleep(150);
    expect(idp.isValid(short)).toBe(false);
  });

  it('issues JWT-shaped tokens whose payload exp governs validity', async () => {
    const idp = await idpWith();
    idp.enqueue({ kind: 'token', jwt: { expInS: 120 } }, { kind: 'token', jwt: { expInS: -10 } });
    const live = (await (await postToken(idp, demoPost)).json()) as Record<string, unknown>;
    const parts = String(live.access_token).split('.');
    expect(parts).toHaveLength(3);
    expect(parts[2]).toBe('x');
    const payload = JSON.parse(Buffer.from(parts[1] ?? '', 'base64url').toString()) as { exp: number; sub: string };
    expect(payload.sub).toBe('demo-client');
    expect(Math.abs(payload.exp - (Date.now() / 1000 + 120))).toBeLessThan(2);
    expect(idp.isValid(String(live.access_token))).toBe(true);

    const dead = (await (await postToken(idp, demoPost)).json()) as Record<string, unknown>;
    expect(dead.expires_in).toBe(3600); // expires_in says an hour, but the JWT itself has expired
    expect(idp.isValid(String(dead.access_token))).toBe(false);
  });

  it('drops and hangs on request, and close() ends hanging and delayed calls at once', async () => {
    const idp = await startFakeIdp();
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const timersBefore = timers();
    idp.enqueue({ kind: 'drop' });
    await expect(postToken(idp, demoPost)).rejects.toThrow();
    idp.enqueue({ kind: 'hang' });
    const hanging = postToken(idp, demoPost);
    idp.setDelay(60_000);
    const delayed = postToken(idp, demoPost);
    const outcomes = Promise.allSettled([hanging, delayed]); // observe the rejections before they happen
    while (idp.calls < 3) await sleep(5);
    const t0 = performance.now();
    await idp.close();
    expect((await outcomes).map((o) => o.status)).toEqual(['rejected', 'rejected']);
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(timers()).toBeLessThanOrEqual(timersBefore); // the 60 s delay timer was cancelled, not left running
  });

  it('serves https when given a certificate', async () => {
    const tls = await selfSignedLocalhost();
    const idp = await idpWith({ tls, defaultExpiresInS: 30 });
    expect(idp.url).toBe(`https://127.0.0.1:${idp.port}/oauth/token`);
    const res = await httpsJson(idp.url, tls.cert, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic('demo-client', 'demo-secret') },
      body: 'grant_type=client_credentials',
    });
    expect(res).toMatchObject({ status: 200, json: { expires_in: 30 } });
  });
});

describe('echo vendor', () => {
  it('echoes method, raw target with query, Authorization and a body digest, and records the request', async () => {
    const vendor = await vendorWith();
    expect(vendor.url).toBe(`http://127.0.0.1:${vendor.port}`);
    const res = await fetch(`${vendor.url}/v2/items?q=a%20b&x=1`, { headers: { authorization: 'Bearer abc' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-vendor')).toBe('echo');
    expect(res.headers.get('x-hop')).toBeNull();
    expect(await res.json()).toEqual({
      method: 'GET',
      path: '/v2/items?q=a%20b&x=1',
      authorization: 'Bearer abc',
      bodyBytes: 0,
      bodySha256: createHash('sha256').digest('hex'),
    });
    expect(vendor.count).toBe(1);
    expect(vendor.requests[0]).toMatchObject({ method: 'GET', target: '/v2/items?q=a%20b&x=1', authorization: 'Bearer abc' });
    expect(vendor.requests[0]?.rawHeaders).toContain('Bearer abc');
  });

  it('records a 64 KiB POST body byte for byte', async () => {
    const vendor = await vendorWith();
    const payload = randomBytes(65536);
    const res = await fetch(`${vendor.url}/v2/upload`, { method: 'POST', body: payload });
    expect(await res.json()).toMatchObject({
      method: 'POST',
      bodyBytes: 65536,
      bodySha256: createHash('sha256').update(payload).digest('hex'),
    });
    expect(vendor.requests[0]?.body.equals(payload)).toBe(true);
  });

  it('sets the hop-by-hop trap only when asked with x-test-hop: 1', async () => {
    const vendor = await vendorWith();
    const headersOf = (headers: Record<string, string>) =>
      new Promise<http.IncomingHttpHeaders>((resolve, reject) => {
        http.get(`${vendor.url}/v2/x`, { headers }, (res) => resolve(res.resume().headers)).on('error', reject);
      });
    const trapped = await headersOf({ 'x-test-hop': '1' });
    expect([trapped.connection, trapped['x-hop']]).toEqual(['keep-alive, x-hop', 'should-be-stripped']);
    const plain = await headersOf({});
    expect(plain['x-hop']).toBeUndefined();
    expect(plain['x-vendor']).toBe('echo');
  });

  it('answers 401 invalid_token unless acceptToken accepts the bearer token, and on unauthorizedNext', async () => {
    const vendor = await vendorWith({ acceptToken: (t) => t === 'good' });
    const call = (authorization?: string) =>
      fetch(`${vendor.url}/v2/x`, { headers: authorization ? { authorization } : {} });
    for (const auth of [undefined, 'Bearer bad', 'Basic Z29vZA==', 'Bearer good extra']) {
      const res = await call(auth);
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');
      expect(await res.json()).toEqual({ error: 'invalid_token' });
    }
    expect((await call('Bearer good')).status).toBe(200);

    vendor.acceptToken = undefined;
    expect((await call('Bearer bad')).status).toBe(200);
    vendor.unauthorizedNext(2);
    expect([(await call()).status, (await call()).status, (await call()).status]).toEqual([401, 401, 200]);
    expect(vendor.count).toBe(9);
  });

  it('serves __bytes/N as N bytes of the deterministic pattern', async () => {
    const vendor = await vendorWith();
    const res = await fetch(`${vendor.url}/v2/__bytes/65536`);
    expect(res.headers.get('content-length')).toBe('65536');
    expect(res.headers.get('content-type')).toBe('application/octet-stream');
    const body = Buffer.from(await res.arrayBuffer());
    expect(body.length).toBe(65536);
    expect(body.equals(vendorBytes(65536))).toBe(true);
    expect([body[250], body[251]]).toEqual([250, 0]);
  });

  it('streams __chunked as three chunks 50 ms apart without a content-length', async () => {
    const vendor = await vendorWith();
    const startedMs = performance.now();
    const res = await fetch(`${vendor.url}/v2/__chunked`);
    expect(res.headers.get('content-length')).toBeNull();
    expect(res.headers.get('transfer-encoding')).toBe('chunked');
    const reader = res.body!.getReader();
    const arrivals: number[] = [];
    let text = '';
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      arrivals.push(performance.now());
      text += Buffer.from(r.value).toString();
    }
    expect(text).toBe('chunk-0\nchunk-1\nchunk-2\n');
    expect(arrivals.length).toBeGreaterThanOrEqual(2);
    // The vendor waits 2 × 50 ms before its last chunk: a lower bound from the request's start, whatever the load (the
    // gap between our first and last read is not: under load the first read may come late).
    expect((arrivals.at(-1) ?? 0) - startedMs).toBeGreaterThanOrEqual(95);
  });

  it('answers __redirect, __status/N and __slow/MS', async () => {
    const vendor = await vendorWith();
    const redirect = await fetch(`${vendor.url}/v2/__redirect`, { redirect: 'manual' });
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get('location')).toBe(`http://127.0.0.1:${vendor.port}/elsewhere`);

    const failed = await fetch(`${vendor.url}/v2/__status/503?x=1`);
    expect(failed.status).toBe(503);
    expect(await failed.json()).toMatchObject({ path: '/v2/__status/503?x=1' });
    expect((await fetch(`${vendor.url}/v2/__status/204`)).status).toBe(204);

    const t0 = performance.now();
    const slow = await fetch(`${vendor.url}/v2/__slow/200`);
    expect(slow.status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(195);
  });

  it('close() ends a slow request at once', async () => {
    const vendor = await startEchoVendor();
    const pending = fetch(`${vendor.url}/__slow/60000`);
    while (vendor.count < 1) await sleep(5);
    const t0 = performance.now();
    await vendor.close();
    await expect(pending).rejects.toThrow();
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it('serves https when given a certificate', async () => {
    const tls = await selfSignedLocalhost();
    const vendor = await vendorWith({ tls });
    expect(vendor.url).toBe(`https://127.0.0.1:${vendor.port}`);
    expect(await httpsJson(`${vendor.url}/v2/secure`, tls.cert)).toMatchObject({ status: 200, json: { path: '/v2/secure' } });
  });
});
