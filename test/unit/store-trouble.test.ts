import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';
import { causeOf, StoreTrouble } from '../../src/tokens/store-trouble.js';

describe('store trouble', () => {
  it('names the cause of an outage', () => {
    expect(causeOf({ op: 'get', reason: 'timeout', message: 'no answer within 1000 ms' })).toBe('timeout');
    expect(causeOf({ op: 'get', reason: 'down', message: 'not connected (connect ECONNREFUSED 127.0.0.1:6390)' })).toBe('refused');
    expect(causeOf({ op: 'get', reason: 'down', message: 'not connected (WRONGPASS invalid username-password pair)' })).toBe('auth');
    expect(causeOf({ op: 'get', reason: 'error', message: 'NOPERM this user has no permissions to run the evalsha command' })).toBe('auth');
    expect(causeOf({ op: 'get', reason: 'down', message: 'Connection is closed.' })).toBe('down');
    expect(causeOf({ op: 'put', reason: 'error', message: 'ERR something' })).toBe('error');
  });

  it('says so once per change of state, not once per refresh', () => {
    const lines: Record<string, unknown>[] = [];
    const trouble = new StoreTrouble(createLogger({ level: 'info', destination: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) } }));
    const late = { op: 'get', reason: 'timeout' as const, message: 'no answer within 1000 ms' };
    for (let i = 0; i < 5; i++) trouble.report(late);
    trouble.report({ op: 'get', reason: 'down', message: 'not connected (connect ECONNREFUSED 127.0.0.1:1)' });
    trouble.recovered();
    trouble.recovered();
    trouble.report(late);
    expect(lines.map((l) => [l['event'], l['cause'] ?? l['was']])).toEqual([
      ['store.degraded', 'timeout'],
      ['store.degraded', 'refused'],
      ['store.recovered', 'refused'],
      ['store.degraded', 'timeout'],
    ]);
  });
});
