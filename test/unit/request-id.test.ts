import { describe, expect, it } from 'vitest';
import { requestIdGenerator } from '../../src/proxy/request-id.js';

// RFC 9562 §5.8: version 8 in the 13th hex digit, variant 0b10 (8, 9, a or b) in the 17th.
const UUID_V8 = /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('request ids', () => {
  it('are RFC 9562 UUIDv8 strings, distinct within a process', () => {
    const next = requestIdGenerator();
    const ids = Array.from({ length: 10_000 }, next);
    for (const id of ids.slice(0, 50)) expect(id).toMatch(UUID_V8);
    expect(ids.at(-1)).toMatch(UUID_V8);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('differ between processes (their random parts differ), whatever the random bytes', () => {
    const a = requestIdGenerator(Buffer.from('0000000000000000', 'hex'))();
    const b = requestIdGenerator(Buffer.from('ffffffffffffffff', 'hex'))();
    expect(a).toMatch(UUID_V8);
    expect(b).toMatch(UUID_V8);
    expect(a.slice(0, 23)).not.toBe(b.slice(0, 23));
    expect(a).toBe('00000000-0000-8000-8000-000000000001');
  });
});
