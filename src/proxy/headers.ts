/** Header rules for both directions. Pure. */

/** Hop-by-hop headers (RFC 9110 §7.6.1) plus framing and proxy credentials that must never travel on. */
const REQUEST_DROP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'http2-settings', 'host', 'expect',
]);

const RESPONSE_DROP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings',
]);

/** Header names listed in Connection (RFC 9110 §7.6.1: they are hop-by-hop too). */
function connectionOptions(value: string | undefined, into: Set<string>): void {
  if (!value) return;
  for (const name of value.split(',')) {
    const n = name.trim().toLowerCase();
    if (n) into.add(n);
  }
}

/**
 * The app's raw headers (`[name, value, name, value, …]`) as the vendor should see them: hop-by-hop and
 * Connection-named headers dropped, the app's own copy of the injected header dropped, the injected header added.
 */
export function upstreamRequestHeaders(rawHeaders: readonly string[], injectName: string, injectValue: string): string[] {
  let named: Set<string> | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if ((rawHeaders[i] ?? '').toLowerCase() === 'connection') connectionOptions(rawHeaders[i + 1], (named ??= new Set()));
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

/** The vendor's response headers as the app should see them. */
export function downstreamResponseHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const named = new Set<string>();
  const connection = headers['connection'];
  connectionOptions(Array.isArray(connection) ? connection.join(',') : connection, named);
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || RESPONSE_DROP.has(name) || named.has(name)) continue;
    out[name] = value;
  }
  return out;
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
