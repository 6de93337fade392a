/**
 * Every routes.yaml example in docs/authentication.md (a ```yaml block that starts with `version: 1`) loads, with no
 * problem and no warning, and its route's auth is what the `<!-- expect: … -->` comment right before it promises.
 * The examples name files under /var/run/secrets/; they are laid out in a temp dir with real content (RSA and EC
 * keys as PKCS#8 PEM and as a JWK, certificates, an AES key, a JWT) and the paths rewritten to it.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import type { OAuth2Auth } from '../../src/config/types.js';
import { certificateThumbprint } from '../../src/core/signing-key.js';
import { makeCerts } from '../helpers/certs.js';

const DOC = fileURLToPath(new URL('../../docs/authentication.md', import.meta.url));
const SECRETS = '/var/run/secrets/';
const MIN_EXAMPLES = 12;

interface Example {
  /** The nearest heading above the block. */
  heading: string;
  /** 1-based line of the opening fence. */
  line: number;
  yaml: string;
  expect: Record<string, string> | undefined;
}

const EXPECT_KEYS = new Set(['grant', 'clientAuth', 'assertionAudience', 'dpop', 'certificate', 'store', 'expiryFormat']);

function parseExpect(line: string): Record<string, string> | undefined {
  const m = /^<!--\s*expect:\s*(.*?)\s*-->$/.exec(line.trim());
  if (!m) return undefined;
  return Object.fromEntries(
    (m[1] ?? '').split(',').map((pair) => {
      const at = pair.indexOf('=');
      return at === -1 ? [pair.trim(), ''] : [pair.slice(0, at).trim(), pair.slice(at + 1).trim()];
    }),
  );
}

/** The ```yaml blocks of the page, with the heading above and the comment right before each. */
function yamlBlocks(markdown: string): Example[] {
  const lines = markdown.split('\n');
  const blocks: Example[] = [];
  let heading = '(no heading)';
  let lastNonBlank = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    if (/^```yaml\b/.test(line)) {
      const start = i;
      const body: string[] = [];
      for (i++; i < lines.length && !/^```\s*$/.test(lines[i] as string); i++) body.push(lines[i] as string);
      blocks.push({ heading, line: start + 1, yaml: `${body.join('\n')}\n`, expect: parseExpect(lastNonBlank) });
      lastNonBlank = '';
      continue;
    }
    if (/^```/.test(line)) {
      // Some other fenced block: skip it whole, so a '#' inside is not taken as a heading.
      for (i++; i < lines.length && !/^```\s*$/.test(lines[i] as string); i++);
      lastNonBlank = '';
      continue;
    }
    const h = /^#{2,6}\s+(.*)$/.exec(line);
    if (h) heading = h[1] as string;
    if (line.trim() !== '') lastNonBlank = line;
  }
  return blocks;
}

const markdown = readFileSync(DOC, 'utf8');
const blocks = yamlBlocks(markdown);
const examples = blocks.filter((b) => b.yaml.startsWith('version: 1\n'));

/** Every `{ fromFile: … }` and `{ fromEnv: … }` the examples name (outside YAML comments). */
const uncommented = (yaml: string) => yaml.replace(/(^|\s)#.*$/gm, '$1');
const named = (pattern: RegExp) => [...new Set(examples.flatMap((e) => [...uncommented(e.yaml).matchAll(pattern)].map((m) => m[1] as string)))];
const filesNamed = named(/fromFile:\s*([^\s},]+)/g);
const envNamed = named(/fromEnv:\s*([A-Za-z_][A-Za-z0-9_]*)/g);
const ENV: NodeJS.ProcessEnv = Object.fromEntries(envNamed.map((name) => [name, `example-${name.toLowerCase().replace(/_/g, '-')}`]));

type Kind = 'secret' | 'rsa-pem' | 'ec-pem' | 'ec-jwk' | 'client-cert' | 'client-key' | 'aes-key' | 'jwt';

/** The fake /var/run/secrets: each file the page names, by what it must hold. */
const LAYOUT: Readonly<Record<string, Kind>> = {
  'token-sidecar/pix-credentials/client-secret': 'secret',
  'token-sidecar/sms-credentials/client-secret': 'secret',
  'token-sidecar/kyc-credentials/client-key.pem': 'rsa-pem',
  'token-sidecar/bank-credentials/client-key.json': 'ec-jwk',
  'token-sidecar/bank-credentials/dpop-key.pem': 'ec-pem',
  'token-sidecar/payments-mtls/tls.crt': 'client-cert',
  'token-sidecar/payments-mtls/tls.key': 'client-key',
  'token-sidecar/ledger-mtls/tls.crt': 'client-cert',
  'token-sidecar/ledger-mtls/tls.key': 'client-key',
  'token-sidecar/wallet-credentials/client-secret': 'secret',
  'token-sidecar/wallet-credentials/dpop-key.pem': 'ec-pem',
  'token-sidecar/store-encryption/2026-12': 'aes-key',
  'token-sidecar/crm-credentials/client-secret': 'secret',
  'token-sidecar/crm-credentials/refresh-token': 'secret',
  'token-sidecar/directory-credentials/assertion-key.pem': 'rsa-pem',
  'tokens/vendor-token': 'jwt',
  'token-sidecar/reports-credentials/client-secret': 'secret',
};

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'token-sidecar-docs-auth-'));
  const certs = await makeCerts();
  const pkcs8 = (key: ReturnType<typeof generateKeyPairSync>['privateKey']) => key.export({ format: 'pem', type: 'pkcs8' }).toString();
  const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const content = (kind: Kind): string => {
    switch (kind) {
      case 'secret':
        return `${randomBytes(24).toString('base64url')}\n`;
      case 'rsa-pem':
        return pkcs8(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey);
      case 'ec-pem':
        return pkcs8(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
      case 'ec-jwk':
        return `${JSON.stringify(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }))}\n`;
      case 'client-cert':
        return certs.clientCert;
      case 'client-key':
        return certs.clientKey;
      case 'aes-key':
        return `${randomBytes(32).toString('base64')}\n`;
      case 'jwt': {
        const now = Math.floor(Date.now() / 1000);
        const claims = { iss: 'https://kubernetes.default.svc', sub: 'system:serviceaccount:payments:payments-api', aud: ['https://sts.partner.example'], iat: now, exp: now + 3600 };
        return `${b64url({ alg: 'RS256', kid: 'k8s' })}.${b64url(claims)}.${randomBytes(256).toString('base64url')}`;
      }
    }
  };
  for (const [relative, kind] of Object.entries(LAYOUT)) {
    const file = join(root, relative);
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, content(kind), { mode: 0o600 });
  }
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('docs/authentication.md', () => {
  it(`has at least ${MIN_EXAMPLES} routes.yaml examples, each with an expect comment right before it`, () => {
    expect(examples.length).toBeGreaterThanOrEqual(MIN_EXAMPLES);
    expect(examples.filter((e) => e.expect === undefined).map((e) => `line ${e.line} (${e.heading})`)).toEqual([]);
    for (const e of examples) expect(Object.keys(e.expect ?? {}).filter((k) => !EXPECT_KEYS.has(k)), `line ${e.line}`).toEqual([]);
  });

  it('has no routes.yaml that escapes the test by not starting with version: 1', () => {
    const untested = blocks.filter((b) => !examples.includes(b) && /^(routes|auth):/m.test(b.yaml));
    expect(untested.map((b) => `line ${b.line}`)).toEqual([]);
  });

  it('names only files under /var/run/secrets/ that the test lays out', () => {
    expect(filesNamed.filter((f) => !f.startsWith(SECRETS))).toEqual([]);
    expect(filesNamed.map((f) => f.slice(SECRETS.length)).filter((f) => !(f in LAYOUT))).toEqual([]);
  });

  for (const example of examples) {
    it(`${example.heading} (line ${example.line}) loads as promised`, async () => {
      const want = example.expect ?? {};
      const text = example.yaml.replaceAll(SECRETS, `${root}/`);
      const result = await loadConfigText(text, { env: ENV, baseDir: root, fileName: `docs/authentication.md:${example.line}` });
      if (!result.ok) throw new Error(`does not load:\n${result.problems.join('\n')}`);
      expect(result.warnings).toEqual([]);
      const { config } = result;
      expect(config.routes).toHaveLength(1);
      const route = config.routes[0];
      if (route?.auth.type !== 'oauth2') throw new Error('expected an oauth2 route');
      const auth: OAuth2Auth = route.auth;

      expect({ grant: auth.grant, clientAuth: auth.clientAuth }).toEqual({ grant: want['grant'], clientAuth: want['clientAuth'] });
      expect(auth.dpop === undefined ? undefined : auth.dpop.shared ? 'shared' : 'pod').toBe(want['dpop']);
      if (want['assertionAudience'] !== undefined) expect(auth.assertionAudience).toBe(want['assertionAudience']);
      if (auth.clientAuth === 'private_key_jwt') expect(auth.clientKey?.thumbprint).toMatch(/^[A-Za-z0-9_-]{43}$/);
      if (want['expiryFormat'] !== undefined) expect(auth.tokenResponse.expiryFormat).toBe(want['expiryFormat']);

      if (want['certificate'] !== undefined) {
        expect(want['certificate']).toBe('bound');
        // The token endpoint and the vendor see the same client certificate, so a cnf.x5t#S256-bound token works.
        expect(auth.certificateThumbprint).toMatch(/^[A-Za-z0-9_-]{43}$/);
        expect(certificateThumbprint(route.upstreamTls?.cert ?? '')).toBe(auth.certificateThumbprint);
      } else expect(auth.certificateThumbprint).toBeUndefined();

      if (want['store'] !== undefined) {
        expect(want['store']).toBe('redis-encrypted');
        if (config.store.type !== 'redis') throw new Error('expected store: redis');
        expect(config.store.encryptionKeys.length).toBeGreaterThanOrEqual(1);
        for (const k of config.store.encryptionKeys) expect(k.key).toHaveLength(32);
      }

      if (auth.grant === 'refresh_token') expect(auth.refreshToken).toBeDefined();
      if (auth.grant === 'jwt_bearer') expect(auth.assertion?.key.thumbprint).toMatch(/^[A-Za-z0-9_-]{43}$/);
      if (auth.grant === 'token_exchange') expect(auth.subjectToken?.file.startsWith(`${root}/`)).toBe(true);
    });
  }
});
