/**
 * A token endpoint that quotes what it received (its Authorization header, its form) in its error text must not get
 * any spelling of our credential into the app's problem body, a log line, the admin API or `token ROUTE`: the raw
 * secret, the Basic credential (base64 of id:secret), or the form-encoded secret.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { stringify } from 'yaml';
import { loadConfigText } from '../../src/config/load.js';
import { startEchoVendor, type EchoVendor } from '../../src/dev/echo-vendor.js';
import { startFakeIdp, type FakeIdp } from '../../src/dev/fake-idp.js';
import { createLogger } from '../../src/log.js';
import { formEncode } from '../../src/oauth/redact.js';
import { Sidecar } from '../../src/sidecar.js';
import { capturingDestination } from '../helpers/log-capture.js';

const CLIENT_ID = 'echo-client';
/** Characters that every encoding spells differently: space, +, /, &, =, % and a non-ASCII one. */
const SECRET = 'S3cr et+/x&y=z%ü-9f2c';
const CLI = resolve(import.meta.dirname, '../../dist/token-sidecar.mjs');

const spellings = (): Record<string, string> => {
  const basic = Buffer.from(`${formEncode(CLIENT_ID)}:${formEncode(SECRET)}`).toString('base64');
  return { raw: SECRET, basic, basicNoPadding: basic.replace(/=+$/, ''), form: formEncode(SECRET), percent: encodeURIComponent(SECRET) };
};

function expectNoSpelling(text: string, where: string): void {
  for (const [name, form] of Object.entries(spellings())) expect(text.includes(form), `${name} spelling of the secret in ${where}`).toBe(false);
}

let idp: FakeIdp;
let vendor: EchoVendor;
let dir: string;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  [idp, vendor] = await Promise.all([startFakeIdp({ clients: { [CLIENT_ID]: SECRET } }), startEchoVendor()]);
  dir = await mkdtemp(join(tmpdir(), 'echoed-secrets-'));
});
afterEach(async () => {
  await Promise.allSettled(cleanups.splice(0).map((c) => c()));
});
afterAll(async () => {
  await Promise.all([idp.close(), vendor.close(), rm(dir, { recursive: true, force: true })]);
});

function configYaml(clientAuth: string): string {
  return stringify({
    version: 1,
    listen: '127.0.0.1:0',
    admin: '127.0.0.1:0',
    routes: [
      {
        name: 'pix',
        match: { pathPrefix: '/pix' },
        upstream: `${vendor.url}/v2`,
        auth: { type: 'oauth2', tokenUrl: idp.url, clientId: CLIENT_ID, clientSecret: { fromEnv: 'ECHO_TEST_SECRET' }, clientAuth },
      },
    ],
  });
}

describe('a token endpoint that echoes what it received', () => {
  for (const clientAuth of ['client_secret_basic', 'client_secret_post']) {
    it(`${clientAuth}: no spelling of the secret in the problem body, the logs, /v1/routes or token ROUTE`, async () => {
      idp.setBehavior({ kind: 'echo', status: 401, error: 'invalid_client' });
      const yaml = configYaml(clientAuth);
      const loaded = await loadConfigText(yaml, { env: { ECHO_TEST_SECRET: SECRET } });
      if (!loaded.ok) throw new Error(loaded.problems.join('\n'));
      const lines: string[] = [];
      const log = createLogger({ level: 'debug', destination: capturingDestination(lines) });
      const sidecar = await Sidecar.start({ config: loaded.config, log });
      cleanups.push(() => sidecar.stop(0));

      const before = idp.requests.length;
      const answer = await request(`${sidecar.proxyUrl}/pix/x`);
      const problem = await answer.body.text();
      expect(answer.statusCode).toBe(502);
      expect(JSON.parse(problem)).toMatchObject({ code: 'TOKEN_REJECTED' });
      // The endpoint did receive (and so echoed) the spelling this client authentication sends.
      const sent = idp.requests[before];
      if (clientAuth === 'client_secret_basic') expect(sent?.headers.authorization).toBe(`Basic ${spellings()['basic']}`);
      else expect(sent?.form.client_secret).toBe(SECRET);

      const routes = await (await request(`${sidecar.adminUrl}/v1/routes`)).body.text();
      expect(routes).toContain('invalid_client');
      const file = join(dir, `${clientAuth}.yaml`);
      await writeFile(file, yaml);
      const cli = await promisify(execFile)(process.execPath, [CLI, 'token', 'pix', '--config', file], {
        env: { ...process.env, ECHO_TEST_SECRET: SECRET, LOG_FORMAT: 'json', LOG_LEVEL: 'debug' },
        timeout: 15_000,
      }).then(
        () => ({ stdout: '', stderr: 'token ROUTE unexpectedly succeeded' }),
        (err: { stdout: string; stderr: string }) => ({ stdout: err.stdout, stderr: err.stderr }),
      );
      expect(cli.stderr).toContain('TOKEN_REJECTED');

      expectNoSpelling(problem, 'the problem body');
      expectNoSpelling(routes, '/v1/routes');
      expectNoSpelling(lines.join('\n'), 'the log');
      expectNoSpelling(cli.stdout + cli.stderr, 'token ROUTE');
      // The operator still learns what the endpoint said, redacted, in the log.
      expect(lines.some((l) => l.includes('"oauthErrorDescription"') && l.includes('[redacted]'))).toBe(true);
    });
  }
});
