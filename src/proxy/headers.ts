/** Header rules for both directions. Pure. */

/** Hop-by-hop headers (RFC 9110 §7.6.1) plus framing and proxy credentials that must never travel on. */
const REQUEST_DROP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'http2-settings', 'host', 'expect',
]);

const RESPONSE_DROP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings',
]);

/**
 * Header names listed in Connection (RFC 9110 §7.6.1: they are hop-by-hop too), added to `into` (made when first
 * needed). `close` and `keep-alive`, by far the common values, name nothing that is not dropped already.
 */
function connectionOptions(value: string | undefined, into: Set<string> | undefined): Set<string> | undefined {
  if (!value) return into;
  for (const name of value.split(',')) {
    const n = name.trim().toLowerCase();
    if (n && n !== 'close' && n !== 'keep-alive') (into ??= new Set()).add(n);
  }
  return into;
}

/**
 * The app's raw headers (`[name, value, name, value, …]`) as the vendor should see them: hop-by-hop and
 * Connection-named headers dropped, the app's own copy of the injected header dropped, the injected header added.
 */
export function upstreamRequestHeaders(rawHeaders: readonly string[], injectName: string, injectValue: string): string[] {
  let named: Set<string> | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if ((rawHeaders[i] ?? '').toLowerCase() === 'connection') named = connectionOptions(rawHeaders[i + 1], named);
  }
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] ?? '';
    const lower = name.toLowerCase();
    if (REQUEST_DROP.has(lower) || lower === injectName || named?.has(lower)) continue;
    out.push(name, rawHeaders[i + 1] ?? '');
  }
  out.push(injectName, injectValue);
  return out;
}

/**
 * The vendor's raw response headers (undici's `[name, value, …]` Buffers) as the app should see them, flat for
 * `writeHead`: hop-by-hop and Connection-named headers dropped, `extra` appended.
 */
export function downstreamResponseHeaders(rawHeaders: readonly Buffer[], extra?: readonly string[]): string[] {
  const out: string[] = [];
  let named: Set<string> | undefined;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as Buffer).toString('latin1');
    const value = (rawHeaders[i + 1] as Buffer).toString('latin1');
    const lower = name.toLowerCase();
    if (lower === 'connection') named = connectionOptions(value, named);
    if (RESPONSE_DROP.has(lower)) continue;
    out.push(name, value);
  }
  // Rare: Connection names more headers (`close` and `keep-alive` are already gone).
  const filtered = named === undefined ? out : out.filter((_, i, all) => !named.has((all[i - (i % 2)] ?? '').toLowerCase()));
  if (extra) for (const h of extra) filtered.push(h);
  return filtered;
}

/** `Bearer {token}` → `Bearer abc`. */
export function formatInjection(format: string, token: string): string {
  // A replacer function: a replacement string would expand `$&`, `$'`… that a token may legally contain.
  return format.replace('{token}', () => token);
}

/** RFC 9112 §3.2: a request with more than one Host header must be answered 400. */
export function countHostHeaders(rawHeaders: readonly string[]): number {
  let n = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) if ((rawHeaders[i] ?? '').length === 4 && rawHeaders[i]?.toLowerCase() === 'host') n++;
  return n;
}
