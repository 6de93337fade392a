/**
 * The refresh chain's choice of refresh token, on the memory store, with the store's grant writes made to fail for
 * a while (an outage seen from the chain): the newest refresh token is always the one sent.
 */
import { describe, expect, it } from 'vitest';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Stored } from '../../src/core/errors.js';
import { loadConfigText } from '../../src/config/load.js';
import type { OAuth2Auth } from '../../src/config/types.js';
import { MemoryStore } from '../../src/store/memory.js';
import { RefreshChain } from '../../src/tokens/refresh-chain.js';

async function auth(extra = ''): Promise<OAuth2Auth> {
  const loaded = await loadConfigText(`version: 1
routes:
  - name: crm
    match: { pathPrefix: /crm }
    upstream: https://api.vendor.test
    auth: { type: oauth2, grant: refresh_token, tokenUrl: https://idp.vendor.test/token, clientId: crm, clientSecret: s3cret-value, refreshToken: seed-refresh-token${extra} }
`);
  if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
  return loaded.config.routes[0]?.auth as OAuth2Auth;
}

/** One refresh through the chain: what it sent, given what the vendor rotates it to. */
async function refresh(chain: RefreshChain, a: OAuth2Auth, next: string): Promise<string | undefined> {
  const { grant, saved } = await chain.input('crm', a);
  grant.onRefreshToken?.(next);
  await saved();
  return grant.refreshToken;
}

class FlakyGrantStore extends MemoryStore {
  down = false;
  override async putGrantState(key: string, value: string): Promise<Stored<void>> {
    if (this.down) return { ok: false, outage: { op: 'put_grant', reason: 'down', message: 'not connected' } };
    return super.putGrantState(key, value);
  }
}

describe('RefreshChain', () => {
  it('sends the seed, then each rotated refresh token once, in order', async () => {
    const a = await auth();
    const chain = new RefreshChain(new MemoryStore(), () => undefined);
    expect(await refresh(chain, a, 'rt-1')).toBe('seed-refresh-token');
    expect(await refresh(chain, a, 'rt-2')).toBe('rt-1');
    expect(await refresh(chain, a, 'rt-3')).toBe('rt-2');
  });

  it('a refresh token rotated while the store could not take it is sent next, not the older one the store holds', async () => {
    const a = await auth();
    const store = new FlakyGrantStore();
    const outages: string[] = [];
    const chain = new RefreshChain(store, (o) => outages.push(o.op));
    expect(await refresh(chain, a, 'rt-1')).toBe('seed-refresh-token');
    store.down = true;
    expect(await refresh(chain, a, 'rt-2')).toBe('rt-1'); // rt-2 only here
    store.down = false;
    expect(await refresh(chain, a, 'rt-3')).toBe('rt-2');
    expect(await refresh(chain, a, 'rt-4')).toBe('rt-3');
    expect(outages).toEqual(['put_grant']);
  });

  it('a new chain (another keeper after a secret rotation) continues from the store', async () => {
    const store = new MemoryStore();
    const a = await auth();
    expect(await refresh(new RefreshChain(store, () => undefined), a, 'rt-1')).toBe('seed-refresh-token');
    const rotated = await auth(', scopes: [crm.read]');
    expect(rotated.identity).not.toBe(a.identity);
    expect(rotated.refreshChainKey).toBe(a.refreshChainKey);
    expect(await refresh(new RefreshChain(store, () => undefined), rotated, 'rt-2')).toBe('rt-1');
  });
});

describe('token exchange: whom the subject token speaks for is part of the identity', () => {
  const jwt = (claims: Record<string, unknown>) =>
    ['{"alg":"RS256"}', JSON.stringify(claims)].map((p) => Buffer.from(p).toString('base64url')).join('.') + '.c2ln';

  async function identityWith(token: string): Promise<string> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'subject-'));
    await writeFile(path.join(dir, 'token'), token);
    const loaded = await loadConfigText(
      `version: 1
routes:
  - name: dir
    match: { pathPrefix: /dir }
    upstream: https://api.vendor.test
    auth: { type: oauth2, grant: token_exchange, clientAuth: none, tokenUrl: https://idp.vendor.test/token, clientId: dir, subjectToken: { fromFile: token } }
`,
      { baseDir: dir },
    );
    if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
    return (loaded.config.routes[0]?.auth as OAuth2Auth).identity;
  }

  it('another service account: another token; the same one rotated: the same token', async () => {
    const iss = 'https://kubernetes.default.svc';
    const a1 = await identityWith(jwt({ iss, sub: 'system:serviceaccount:pay:api', iat: 1 }));
    const a2 = await identityWith(jwt({ iss, sub: 'system:serviceaccount:pay:api', iat: 2 }));
    const b = await identityWith(jwt({ iss, sub: 'system:serviceaccount:crm:api', iat: 1 }));
    expect(a2).toBe(a1);
    expect(b).not.toBe(a1);
    expect(await identityWith('opaque-token-1')).not.toBe(await identityWith('opaque-token-2'));
  });
});
