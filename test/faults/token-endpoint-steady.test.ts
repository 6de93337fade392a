/**
 * The token endpoint misbehaving under a steady load, for 10× the token lifetime: down (connections dropped), slow,
 * 429 with Retry-After, and garbage, each for half a lifetime, between normal stretches. The promise: no request
 * fails while a token is still valid, the vendor never sees an expired token, and token calls stay bounded.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { IdpBehavior } from '../../src/dev/fake-idp.js';
import { CLIENT_ID, SECRET, startStack, type Stack } from '../security/stack.js';

/** `npm run test:soak` (SOAK=1): the same run ten times over. */
const ROUNDS = process.env['SOAK'] === '1' ? 10 : 1;
const LIFETIME_S = 3;
const LIFETIME_MS = LIFETIME_S * 1000;
/** Phases of the run, in lifetimes: a normal stretch, then a fault for half a lifetime. */
const FAULTS: { name: string; behavior: IdpBehavior }[] = [
  { name: 'down', behavior: { kind: 'drop' } },
  { name: 'slow', behavior: { kind: 'token', expiresIn: LIFETIME_S, delayMs: 1_500 } },
  { name: '429', behavior: { kind: 'status', status: 429, body: '{"error":"slow_down"}', contentType: 'application/json', retryAfter: '1' } },
  { name: 'garbage', behavior: { kind: 'status', status: 200, body: '<html>maintenance</html>', contentType: 'text/html' } },
];
const NORMAL: IdpBehavior = { kind: 'token', expiresIn: LIFETIME_S };

let stack: Stack;
const agent = new Agent({ connections: 8 });

beforeAll(async () => {
  stack = await startStack({
    extraRoutes: (vendorUrl, idpUrl) => [
      {
        name: 'steady',
        match: { pathPrefix: '/steady' },
        upstream: `${vendorUrl}/v2`,
        // Half the lifetime ahead: the refresh starts 1.5–2.25 s before expiry, so a fault of half a lifetime fits.
        auth: { type: 'oauth2', tokenUrl: idpUrl, clientId: CLIENT_ID, clientSecret: SECRET, refreshAhead: '50%', timeout: '5s' },
      },
    ],
  });
  stack.idp.setBehavior(NORMAL);
  stack.vendor.acceptToken = (t) => stack.idp.isValid(t);
});

afterAll(async () => {
  await Promise.all([stack?.close(), agent.close()]);
});

it(`${FAULTS.length} faults of half a lifetime each over ${10 * ROUNDS} lifetimes of steady load: no failure while a token is valid`, async () => {
  const startedMs = Date.now();
  // When each token was first seen issued (a lower bound on when the sidecar can serve it until).
  const firstSeenMs = new Map<string, number>();
  const results: { atMs: number; status: number; code: string | undefined }[] = [];
  let running = true;
  const watcher = (async () => {
    while (running) {
      for (const t of stack.idp.issued) if (!firstSeenMs.has(t)) firstSeenMs.set(t, Date.now());
      await sleep(5);
    }
  })();
  const client = async () => {
    while (running) {
      const res = await request(`${stack.sidecar.proxyUrl}/steady/x`, { dispatcher: agent });
      await res.body.dump();
      const code = res.headers['x-token-sidecar-error'];
      results.push({ atMs: Date.now(), status: res.statusCode, code: typeof code === 'string' ? code : undefined });
      await sleep(20);
    }
  };
  const clients = Array.from({ length: 4 }, client);

  for (let round = 0; round < ROUNDS; round++) {
    await sleep(2 * LIFETIME_MS);
    for (const fault of FAULTS) {
      await sleep(LIFETIME_MS);
      stack.idp.setBehavior(fault.behavior);
      await sleep(LIFETIME_MS / 2);
      stack.idp.setBehavior(NORMAL);
    }
    await sleep(2 * LIFETIME_MS);
  }
  running = false;
  await Promise.all([...clients, watcher]);
  const elapsedS = (Date.now() - startedMs) / 1000;

  // A failure is a defect if a token first seen at s was still servable: the sidecar stops serving 10 % of the
  // lifetime before expiry, and its expiry counts from its request (before s); 500 ms of margin on top.
  const servableUntil = (atMs: number) => [...firstSeenMs.values()].some((s) => s <= atMs && atMs < s + LIFETIME_MS * 0.9 - 500);
  const failures = results.filter((r) => r.status !== 200);
  const whileValid = failures.filter((r) => servableUntil(r.atMs));
  expect(whileValid, `failed while a token was valid: ${JSON.stringify(whileValid.slice(0, 5))}`).toEqual([]);
  // The vendor never refused a token (none was served expired), so no request needed a replay.
  expect(failures.filter((r) => r.status === 401)).toEqual([]);
  // Every failure is a typed 503 (no token and none to be had), never an opaque 502 or a hang.
  for (const f of failures) expect([f.status, f.code]).toEqual([503, 'TOKEN_UNAVAILABLE']);
  // Bounded: one call per refresh, and retries at least half a second apart (backoff, Retry-After).
  const calls = stack.idp.requests.map((r) => r.atMs);
  const gaps = calls.slice(1).map((t, i) => t - (calls[i] as number));
  expect(Math.min(...gaps)).toBeGreaterThanOrEqual(400);
  expect(calls.length).toBeLessThanOrEqual(Math.ceil(elapsedS / 0.5));
  console.log(
    `steady faults: ${results.length} requests in ${elapsedS.toFixed(1)} s, ${failures.length} failed (all after every token had lapsed), ${calls.length} token calls, shortest gap ${Math.min(...gaps)} ms, ${firstSeenMs.size} tokens`,
  );
}, 60_000 * ROUNDS);
