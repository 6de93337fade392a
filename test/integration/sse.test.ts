/**
 * Server-sent events and other long answers through a route, in-process against a real node:http event source: the
 * first event reaches the app before the vendor ends, `streaming: true` keeps a quiet stream open past
 * `timeouts.idle` (and past the app listener's own timeouts), and a normal route cuts it with UPSTREAM_TIMEOUT.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startFakeIdp } from '../../src/dev/fake-idp.js';
import { waitUntil } from '../helpers/wait.js';
import { logged, startSidecarWith, type Json } from '../helpers/websocket.js';
import type { SidecarOptions } from '../../src/sidecar.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  await Promise.allSettled(cleanups.splice(0).map((c) => c()));
});

/** One stream: the first event at once; the rest only when `release()` is called (after `pauseMs` if given). */
interface EventSource {
  url: string;
  ended: boolean;
  release(): void;
}

async function eventSource(opts: { contentType: string; pauseMs?: number }): Promise<EventSource> {
  let release: () => void = () => undefined;
  const released = new Promise<void>((resolve) => (release = resolve));
  const source: EventSource = { url: '', ended: false, release: () => release() };
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': opts.contentType, 'cache-control': 'no-store' });
    res.write(`id: 1\ndata: {"n":1,"path":"${req.url}"}\n\n`);
    const rest = opts.pauseMs === undefined ? released : new Promise((resolve) => setTimeout(resolve, opts.pauseMs));
    void rest.then(() => {
      if (res.destroyed) return;
      res.write('id: 2\ndata: {"n":2}\n\n');
      res.end('id: 3\ndata: {"n":3}\n\n', () => (source.ended = true));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => (server.closeAllConnections(), server.close(resolve))));
  source.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return source;
}

async function sidecarTo(upstream: string, route: Json, limits?: SidecarOptions['limits']) {
  const idp = await startFakeIdp({ clients: { sse: 'sse-secret' } });
  cleanups.push(() => idp.close());
  const sc = await startSidecarWith(
    [{ name: 'events', match: { pathPrefix: '/events' }, upstream, auth: { type: 'oauth2', tokenUrl: idp.url, clientId: 'sse', clientSecret: 'sse-secret' }, ...route }],
    limits,
  );
  cleanups.unshift(() => sc.stop());
  return sc;
}

/** Read the body chunk by chunk; `onChunk` sees the text so far. Resolves with all of it, or rejects when cut. */
async function readStream(url: string, onChunk: (soFar: string) => void = () => undefined): Promise<{ status: number; type: string | undefined; text: string }> {
  const res = await request(url, { headers: { accept: 'text/event-stream' } });
  let text = '';
  for await (const chunk of res.body) {
    text += (chunk as Buffer).toString('utf8');
    onChunk(text);
  }
  return { status: res.statusCode, type: res.headers['content-type'] as string | undefined, text };
}

describe('server-sent events and long streams', () => {
  for (const contentType of ['text/event-stream', 'application/x-ndjson']) {
    it(`${contentType}: the first event reaches the app while the vendor is still sending`, async () => {
      const source = await eventSource({ contentType });
      const sc = await sidecarTo(source.url, {});
      let endedAtFirstEvent: boolean | undefined;
      const done = readStream(`${sc.base}/events/live`, (soFar) => {
        if (endedAtFirstEvent !== undefined || !soFar.includes('"n":1')) return;
        endedAtFirstEvent = source.ended;
        // Only now may the vendor go on: had the sidecar buffered the answer, this would never be reached.
        source.release();
      });
      const { status, type, text } = await done;
      expect(status).toBe(200);
      expect(type).toBe(contentType);
      expect(endedAtFirstEvent).toBe(false);
      expect(text).toBe('id: 1\ndata: {"n":1,"path":"/live"}\n\nid: 2\ndata: {"n":2}\n\nid: 3\ndata: {"n":3}\n\n');
    });
  }

  it('streaming: true — a stream silent for longer than timeouts.idle, and than the app listener timeouts, is not cut', async () => {
    const source = await eventSource({ contentType: 'text/event-stream', pauseMs: 1_200 });
    // Node's requestTimeout only covers receiving the request, keepAliveTimeout only an idle connection: both far
    // shorter than the silence here, and neither may cut an answer in flight.
    const limits = { proxy: { headersTimeoutMs: 300, requestTimeoutMs: 300, keepAliveTimeoutMs: 200, timeoutCheckIntervalMs: 100 } };
    const sc = await sidecarTo(source.url, { streaming: true, timeouts: { idle: '300ms' } }, limits);
    const { status, text } = await readStream(`${sc.base}/events/quiet`);
    expect(status).toBe(200);
    expect(text.match(/^id: \d/gm)).toEqual(['id: 1', 'id: 2', 'id: 3']);
    expect(logged(sc.lines, 'request')).toMatchObject([{ route: 'events', status: 200 }]);
    expect(logged(sc.lines, 'request')[0]?.['code']).toBeUndefined();
  });

  it('a normal route cuts the same silence after timeouts.idle: the app sees the answer end early, the log says UPSTREAM_TIMEOUT', async () => {
    const source = await eventSource({ contentType: 'text/event-stream', pauseMs: 1_200 });
    const sc = await sidecarTo(source.url, { timeouts: { idle: '300ms' } });
    let seen = '';
    const startedMs = performance.now();
    const cut = await readStream(`${sc.base}/events/quiet`, (soFar) => (seen = soFar)).then(
      () => undefined,
      (err: unknown) => err,
    );
    const afterMs = performance.now() - startedMs;
    // The headers and the first event had gone out (200), so the only signal left is the cut connection.
    expect(cut).toBeInstanceOf(Error);
    expect(seen).toContain('"n":1');
    expect(seen).not.toContain('"n":2');
    expect(afterMs).toBeGreaterThanOrEqual(250);
    expect(afterMs).toBeLessThan(1_100);
    const line = await waitUntil(() => logged(sc.lines, 'request')[0], 2_000, 20, 'access log line');
    expect(line).toMatchObject({ route: 'events', status: 200, code: 'UPSTREAM_TIMEOUT' });
  });
});
