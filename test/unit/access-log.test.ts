import { describe, expect, it } from 'vitest';
import { BufferedAccessLog, type AccessLogEntry } from '../../src/proxy/access-log.js';

const entry = (over: Partial<AccessLogEntry> = {}): AccessLogEntry => ({
  route: 'pix',
  method: 'GET',
  status: 200,
  durationMs: 1.25,
  tokenSource: 'memory',
  replayed: false,
  code: undefined,
  requestId: 'req-1',
  ...over,
});

describe('BufferedAccessLog', () => {
  it('writes pino-shaped JSON lines, escaping what the app controls', () => {
    const chunks: string[] = [];
    const log = new BufferedAccessLog((c) => chunks.push(c));
    log.write(entry());
    log.write(entry({ route: undefined, method: 'PATCH', status: 404, tokenSource: undefined, code: 'ROUTE_NOT_FOUND', requestId: 'a"b\\c\n{"x":1}' }));
    log.write(entry({ replayed: true, tokenSource: 'fetched', tokenWaitMs: 205.12 }));
    expect(chunks).toEqual([]); // batched until flushed
    log.flush();
    expect(chunks).toHaveLength(1);
    const lines = (chunks[0] ?? '').trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[0]).toMatchObject({ level: 'info', pid: process.pid, event: 'request', route: 'pix', method: 'GET', status: 200, durationMs: 1.25, tokenSource: 'memory', requestId: 'req-1', msg: 'request' });
    expect(Number.isNaN(Date.parse(String(lines[0]?.['time'])))).toBe(false);
    expect(lines[0]).not.toHaveProperty('replayed');
    expect(lines[1]).toMatchObject({ method: 'PATCH', status: 404, code: 'ROUTE_NOT_FOUND', requestId: 'a"b\\c\n{"x":1}' });
    expect(lines[1]).not.toHaveProperty('route');
    expect(lines[2]).toMatchObject({ replayed: true, tokenSource: 'fetched', tokenWaitMs: 205.12 });
    expect(lines[0]).not.toHaveProperty('tokenWaitMs');
  });

  it('hands over a batch once 16 KiB have accumulated, and nothing when empty', () => {
    const chunks: string[] = [];
    const log = new BufferedAccessLog((c) => chunks.push(c));
    log.flush();
    expect(chunks).toEqual([]);
    for (let i = 0; i < 200; i++) log.write(entry({ requestId: `r-${i}` }));
    expect(chunks.length).toBeGreaterThanOrEqual(1);
    log.flush();
    const all = chunks.join('').trimEnd().split('\n');
    expect(all).toHaveLength(200);
    expect(all.map((l) => (JSON.parse(l) as { requestId: string }).requestId)).toEqual(Array.from({ length: 200 }, (_, i) => `r-${i}`));
  });
});
