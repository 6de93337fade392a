import { describe, expect, it } from 'vitest';
import { countHostHeaders, downstreamResponseHeaders, formatInjection, upstreamRequestHeaders } from '../../src/proxy/headers.js';

describe('request headers (app → vendor)', () => {
  it('drops hop-by-hop, Connection-named, Proxy-Authorization, Host and Expect; replaces Authorization; keeps casing and duplicates', () => {
    const raw = [
      'Host', '127.0.0.1:15080',
      'Connection', 'keep-alive, X-Conn-Named',
      'X-Conn-Named', 'drop me',
      'Keep-Alive', 'timeout=5',
      'Proxy-Connection', 'keep-alive',
      'Proxy-Authorization', 'Basic cHJveHk6c2VjcmV0',
      'Proxy-Authenticate', 'Basic',
      'TE', 'trailers',
      'Trailer', 'X-Checksum',
      'Transfer-Encoding', 'chunked',
      'Upgrade', 'websocket',
      'HTTP2-Settings', 'AAMAAABkAAQAAP__',
      'Expect', '100-continue',
      'authorization', 'Bearer app-supplied',
      'AUTHORIZATION', 'Bearer second-copy',
      'X-A', '1',
      'x-a', '2',
      'X-Custom-Case', 'v',
      'Content-Type', 'application/json',
      'Content-Length', '2',
    ];
    expect(upstreamRequestHeaders(raw, 'authorization', 'Bearer T')).toEqual([
      'X-A', '1',
      'x-a', '2',
      'X-Custom-Case', 'v',
      'Content-Type', 'application/json',
      'Content-Length', '2',
      'authorization', 'Bearer T',
    ]);
  });

  it('honours every Connection header and trims and lowercases the names it lists', () => {
    const raw = ['Connection', ' X-Foo ,  x-BAR ', 'connection', 'x-baz', 'x-foo', '1', 'X-Bar', '2', 'X-Baz', '3', 'X-Keep', '4'];
    expect(upstreamRequestHeaders(raw, 'authorization', 'Bearer T')).toEqual(['X-Keep', '4', 'authorization', 'Bearer T']);
  });

  it('with a custom inject header, replaces that header only and adds it once', () => {
    const raw = ['X-Api-Key', 'app-key', 'x-api-key', 'app-key-2', 'Authorization', 'Bearer app'];
    expect(upstreamRequestHeaders(raw, 'x-api-key', 'K')).toEqual(['Authorization', 'Bearer app', 'x-api-key', 'K']);
  });

  it('adds the injected header even when the app sent no headers', () => {
    expect(upstreamRequestHeaders([], 'authorization', 'Bearer T')).toEqual(['authorization', 'Bearer T']);
  });
});

describe('response headers (vendor → app)', () => {
  const raw = (...pairs: string[]): Buffer[] => pairs.map((p) => Buffer.from(p, 'latin1'));

  it('drops hop-by-hop and Connection-named headers and keeps the rest, repeated ones included, in order', () => {
    const kept = [
      'Set-Cookie', 'a=1',
      'Content-Type', 'application/json',
      'Set-Cookie', 'b=2',
      'WWW-Authenticate', 'Bearer error="invalid_token"',
      'Content-Length', '12',
      'Location', 'https://elsewhere.example/',
    ];
    const dropped = [
      'Connection', 'keep-alive, X-Hop',
      'X-Hop', 'should-be-stripped',
      'Keep-Alive', 'timeout=5',
      'Proxy-Connection', 'keep-alive',
      'Transfer-Encoding', 'chunked',
      'TE', 'trailers',
      'Trailer', 'x-checksum',
      'Upgrade', 'h2c',
      'HTTP2-Settings', 'x',
    ];
    // Dropped ones first, in between and last: the order of what is kept must not depend on where they stood.
    const input = [...dropped.slice(0, 8), ...kept.slice(0, 4), ...dropped.slice(8, 14), ...kept.slice(4), ...dropped.slice(14)];
    expect(downstreamResponseHeaders(raw(...input))).toEqual(kept);
  });

  it('reads Connection when it arrives as several fields, and appends the extra headers', () => {
    expect(downstreamResponseHeaders(raw('connection', 'close', 'Connection', 'X-A', 'x-a', '1', 'x-b', '2'), ['x-request-id', 'r1'])).toEqual(['x-b', '2', 'x-request-id', 'r1']);
  });

  it('keeps latin1 values byte for byte', () => {
    expect(downstreamResponseHeaders(raw('x-name', 'Jos\u00e9'))).toEqual(['x-name', 'Jos\u00e9']);
  });
});

describe('formatInjection', () => {
  it('puts the token into the format', () => {
    expect(formatInjection('Bearer {token}', 'abc.def')).toBe('Bearer abc.def');
    expect(formatInjection('{token}', 'k')).toBe('k');
    expect(formatInjection('Token token={token}; v=1', 'k')).toBe('Token token=k; v=1');
  });

  it('inserts tokens containing $ patterns literally (they are legal VSCHARs)', () => {
    for (const token of ['a$&b', "a$'b", 'a$`b', 'a$$b', 'a$1b', 'a$<n>b']) {
      expect(formatInjection('Bearer {token}', token)).toBe(`Bearer ${token}`);
    }
  });
});

describe('countHostHeaders', () => {
  it('counts Host headers in any casing, and only exact Host names', () => {
    expect(countHostHeaders(['Host', 'a', 'host', 'b'])).toBe(2);
    expect(countHostHeaders(['HOST', 'a', 'X-Host', 'b', 'Hostname', 'c'])).toBe(1);
    expect(countHostHeaders([])).toBe(0);
  });
});
