/**
 * `token-sidecar demo`: a local token endpoint and an echo vendor on free ports, the real sidecar between them
 * (configured through the same YAML path as production), a few requests, and what the vendor received.
 */
import { request } from 'undici';
import { loadConfigText } from '../config/load.js';
import { createLogger } from '../log.js';
import { Sidecar } from '../sidecar.js';
import { startFakeIdp } from '../dev/fake-idp.js';
import { startEchoVendor } from '../dev/echo-vendor.js';
import { fingerprintOf } from '../core/token.js';

/** Show a token the way the product names it everywhere: never whole. */
function masked(authorization: string | undefined): string {
  if (!authorization) return '(none)';
  const [scheme, value] = authorization.split(' ');
  return value ? `${scheme} ${value.slice(0, 8)}… (fingerprint ${fingerprintOf(value)})` : '(malformed)';
}

export async function runDemo(out: (line: string) => void = (l) => process.stdout.write(`${l}\n`)): Promise<number> {
  const idp = await startFakeIdp({ clients: { 'demo-client': 'demo-secret' }, defaultExpiresInS: 300 });
  const vendor = await startEchoVendor({ acceptToken: (t) => idp.isValid(t) });
  const yaml = `
version: 1
listen: 127.0.0.1:0
admin: 127.0.0.1:0
routes:
  - name: pix
    match: { pathPrefix: /pix }
    upstream: ${vendor.url}/v2
    auth:
      type: oauth2
      tokenUrl: ${idp.url}
      clientId: demo-client
      clientSecret: demo-secret
      scopes: [cob.read, cob.write]
`;
  const loaded = await loadConfigText(yaml);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  const sidecar = await Sidecar.start({ config: loaded.config, log: createLogger({ level: process.env['LOG_LEVEL'] ?? 'silent' }) });
  out(`token endpoint  ${idp.url}`);
  out(`vendor (echo)   ${vendor.url}/v2  — accepts only tokens the token endpoint issued`);
  out(`sidecar         ${sidecar.proxyUrl}  (route pix: /pix → ${vendor.url}/v2)\n`);

  const call = async (label: string, method: string, path: string, opts: { body?: string; headers?: Record<string, string> } = {}) => {
    const before = vendor.count;
    const res = await request(`${sidecar.proxyUrl}${path}`, { method, headers: opts.headers ?? {}, body: opts.body ?? null });
    await res.body.text();
    const seen = vendor.requests.slice(before);
    out(`▶ ${label}`);
    out(`  app sent     ${method} ${sidecar.proxyUrl}${path}${opts.headers?.['authorization'] ? `  with Authorization: ${opts.headers['authorization']}` : '  (no credentials)'}`);
    seen.forEach((r, i) => {
      out(`  vendor got   ${r.method} ${r.target}  Authorization: ${masked(r.authorization)}${seen.length > 1 ? (i === 0 ? '  → 401' : '  → replayed') : ''}`);
    });
    out(`  app got      ${res.statusCode}; token endpoint calls so far: ${idp.calls}\n`);
  };

  try {
    await call('a cold request: the sidecar fetches a token (client credentials) and injects it', 'GET', '/pix/cob/42?status=ATIVA');
    await call('the next request reuses the cached token', 'POST', '/pix/cob', { body: '{"valor":"10.00"}', headers: { 'content-type': 'application/json' } });
    await call("an Authorization sent by the app is replaced", 'GET', '/pix/cob/43', { headers: { authorization: 'Bearer app-supplied' } });
    const current = idp.lastToken();
    if (current) idp.revoke(current);
    await call('the vendor revokes the token: 401 → one refresh → the request is replayed once', 'GET', '/pix/cob/44');
    await call('no route for this path: a typed error from the sidecar, nothing forwarded', 'GET', '/unknown/x');
    out(`token endpoint calls: ${idp.calls} for ${vendor.count} vendor requests. The app never saw a token or a secret.`);
    return 0;
  } finally {
    await sidecar.stop(1_000);
    await Promise.all([idp.close(), vendor.close()]);
  }
}
