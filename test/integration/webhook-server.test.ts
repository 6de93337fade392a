import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { Agent, request } from 'undici';
import { pino } from 'pino';
import { parseInjectSettings, type InjectSettings } from '../../src/webhook/settings.js';
import { startWebhookServer, type AdmissionResponseBody, type WebhookServer } from '../../src/webhook/server.js';
import { webhookCommand } from '../../src/webhook/cli.js';

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const fixtureDir = join(repoRoot, 'test/fixtures/webhook');
/** The name the API server dials (Service DNS name); the certificate is made for it, as in a cluster. */
const SERVICE_NAME = 'token-sidecar-webhook.token-sidecar-system.svc';
const settings = parseInjectSettings({ image: 'registry.example/token-sidecar:0.1.0' });
const silent = pino({ level: 'silent' });

interface Certs {
  dir: string;
  ca: Buffer;
  certFile: string;
  keyFile: string;
}

/** Certificates made by the same script operators use for the self-signed bootstrap. */
async function makeCerts(dir: string): Promise<Certs> {
  await run('bash', [join(repoRoot, 'scripts/webhook-certs.sh'), '--out', dir]);
  return { dir, ca: await readFile(join(dir, 'ca.crt')), certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') };
}

function agentFor(ca: Buffer): Agent {
  return new Agent({ connect: { ca, servername: SERVICE_NAME } });
}

function fixture(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(fixtureDir, name), 'utf8')) as Record<string, unknown>;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: unknown;
  text: string;
}

async function call(url: string, options: Parameters<typeof request>[1]): Promise<Answer> {
  const res = await request(url, options);
  const text = await res.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, json, text };
}

/** The webhook's own errors are the shared problem+json (http/problem.ts): matched on the code, never the wording. */
function expectProblem(res: Answer, status: number, code: string): void {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toBe('application/problem+json');
  expect(res.headers['x-token-sidecar-error']).toBe(code);
  expect(res.json).toMatchObject({ type: `urn:token-sidecar:error:${code}`, status, code });
}

describe('webhook HTTPS server', () => {
  let workDir: string;
  let certs: Certs;
  let server: WebhookServer;
  let agent: Agent;
  let base: string;

  function post(body: string | Buffer, path = '/mutate'): Promise<Answer> {
    return call(`${base}${path}`, {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/json' },
      dispatcher: agent,
    });
  }

  async function review(body: unknown): Promise<AdmissionResponseBody> {
    const res = await post(JSON.stringify(body));
    expect(res.status).toBe(200);
    return res.json as AdmissionResponseBody;
  }

  beforeAll(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'webhook-server-'));
    certs = await makeCerts(join(workDir, 'certs'));
    server = await startWebhookServer({
      host: '127.0.0.1',
      port: 0,
      certFile: certs.certFile,
      keyFile: certs.keyFile,
      settings,
      logger: silent,
      certReloadIntervalMs: 100,
    });
    agent = agentFor(certs.ca);
    base = `https://127.0.0.1:${server.port}`;
  });

  afterAll(async () => {
    await agent?.close();
    await server?.close();
    await rm(workDir, { recursive: true, force: true });
  });

  it('injects: uid echoed, JSONPatch base64 equal to the golden patch', async () => {
    const input = fixture('review-deployment-pod.json') as { request: { uid: string } };
    const body = await review(input);
    expect(body.apiVersion).toBe('admission.k8s.io/v1');
    expect(body.kind).toBe('AdmissionReview');
    expect(body.response.uid).toBe(input.request.uid);
    expect(body.response.allowed).toBe(true);
    expect(body.response.patchType).toBe('JSONPatch');
    const patch: unknown = JSON.parse(Buffer.from(body.response.patch ?? '', 'base64').toString('utf8'));
    const golden = fixture('review-deployment-pod.expected.json') as { patch: unknown };
    expect(patch).toEqual(golden.patch);
  });

  it('answers allowed with no patch fields when there is nothing to do', async () => {
    const input = fixture('review-deployment-pod.json') as {
      request: { uid: string; object: { metadata: { annotations: Record<string, string> } } };
    };
    input.request.uid = 'no-annotation-uid';
    input.request.object.metadata.annotations = {};
    const body = await review(input);
    expect(body.response).toEqual({ uid: 'no-annotation-uid', allowed: true });
  });

  it('ignores objects that are not a Pod CREATE', async () => {
    const body = await review({
      apiVersion: 'admission.k8s.io/v1',
      kind: 'AdmissionReview',
      request: { uid: 'cm', kind: { group: '', version: 'v1', kind: 'ConfigMap' }, operation: 'CREATE', object: {} },
    });
    expect(body.response).toEqual({ uid: 'cm', allowed: true });
  });

  it('denies a pod that asks for the sidecar without naming its routes, with the reason', async () => {
    const input = fixture('review-deployment-pod.json') as {
      request: { uid: string; object: { metadata: { annotations: Record<string, string> } } };
    };
    delete input.request.object.metadata.annotations['token-sidecar.io/routes'];
    const body = await review(input);
    expect(body.response.uid).toBe(input.request.uid);
    expect(body.response.allowed).toBe(false);
    expect(body.response.patch).toBeUndefined();
    expect(body.response.status?.message).toMatch(/token-sidecar\.io\/routes is required/);
  });

  it('returns warnings to the client', async () => {
    const input = fixture('review-existing-init.json') as { request: { uid: string } };
    const body = await review(input);
    expect(body.response.warnings).toEqual(
      expect.arrayContaining([expect.stringMatching(/terminationGracePeriodSeconds raised/)]),
    );
  });

  it('400 BAD_REQUEST problem for malformed reviews, and keeps serving', async () => {
    expectProblem(await post('{"apiVersion": '), 400, 'BAD_REQUEST');
    expectProblem(
      await post(JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'Pod', request: {} })),
      400,
      'BAD_REQUEST',
    );
    expectProblem(
      await post(JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { object: {} } })),
      400,
      'BAD_REQUEST',
    );
    expectProblem(
      await post(JSON.stringify({ apiVersion: 'admission.k8s.io/v1beta1', kind: 'AdmissionReview' })),
      400,
      'BAD_REQUEST',
    );
    for (const junk of ['null', '42', '"text"', '[]']) {
      expectProblem(await post(junk), 400, 'BAD_REQUEST');
    }
    // A pod that is not a pod is a 200 with allowed: true and no patch (the API server rejects it on its own).
    const badPod = await review({
      apiVersion: 'admission.k8s.io/v1',
      kind: 'AdmissionReview',
      request: { uid: 'bad-pod', object: 'not a pod', namespace: 'x' },
    });
    expect(badPod.response).toEqual({ uid: 'bad-pod', allowed: true });

    const health = await request(`${base}/healthz`, { dispatcher: agent });
    expect(health.statusCode).toBe(200);
    expect((await health.body.text()).trim()).toBe('ok');
  });

  it('413 PAYLOAD_TOO_LARGE problem for a body over 1 MiB, and the connection closes', async () => {
    const huge = Buffer.alloc(2 * 1024 * 1024, 0x20);
    const res = await post(huge);
    expectProblem(res, 413, 'PAYLOAD_TOO_LARGE');
    expect(res.headers.connection).toBe('close');
    // ...and the server still answers afterwards.
    expect((await request(`${base}/healthz`, { dispatcher: agent })).statusCode).toBe(200);
  });

  it('413 for an oversized chunked body (no content-length)', async () => {
    async function* chunks(): AsyncGenerator<Buffer> {
      for (let i = 0; i < 40; i++) yield Buffer.alloc(64 * 1024, 0x20);
    }
    const res = await call(`${base}/mutate`, { method: 'POST', body: Readable.from(chunks()), dispatcher: agent });
    expectProblem(res, 413, 'PAYLOAD_TOO_LARGE');
    expect(res.headers.connection).toBe('close');
  });

  it('404 NOT_FOUND and 405 METHOD_NOT_ALLOWED problems for other paths and methods', async () => {
    expectProblem(await call(`${base}/nope`, { dispatcher: agent }), 404, 'NOT_FOUND');
    const wrongMethod = await call(`${base}/mutate`, { dispatcher: agent });
    expectProblem(wrongMethod, 405, 'METHOD_NOT_ALLOWED');
    expect(wrongMethod.headers.allow).toBe('POST');
    const postHealth = await call(`${base}/healthz`, { method: 'POST', body: '{}', dispatcher: agent });
    expectProblem(postHealth, 405, 'METHOD_NOT_ALLOWED');
    expect(postHealth.headers.allow).toBe('GET, HEAD');
  });

  it('reloads the certificate when its files change (cert-manager rotation)', async () => {
    // A new CA and a new serving certificate, written over the served files.
    const next = await makeCerts(join(workDir, 'next'));
    await writeFile(certs.keyFile, await readFile(next.keyFile));
    await writeFile(certs.certFile, await readFile(next.certFile));

    const nextAgent = agentFor(next.ca);
    try {
      let ok = false;
      for (let i = 0; i < 50 && !ok; i++) {
        try {
          const res = await request(`${base}/healthz`, { dispatcher: nextAgent });
          await res.body.dump();
          ok = res.statusCode === 200;
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      expect(ok).toBe(true);
      // A fresh client trusting only the old CA is now refused.
      const oldAgent = agentFor(certs.ca);
      await expect(request(`${base}/healthz`, { dispatcher: oldAgent })).rejects.toThrow();
      await oldAgent.close();
    } finally {
      await nextAgent.close();
    }
  });
});

describe('webhook internal failure', () => {
  it('500 INTERNAL problem, without the failure\'s own message', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'webhook-internal-'));
    // Settings that throw when read: a bug inside the review, after the body was accepted.
    const broken = new Proxy(settings, {
      get: () => {
        throw new Error('boom: settings unreadable');
      },
    }) as InjectSettings;
    let server: WebhookServer | undefined;
    let agent: Agent | undefined;
    try {
      const certs = await makeCerts(join(dir, 'certs'));
      server = await startWebhookServer({
        host: '127.0.0.1',
        port: 0,
        certFile: certs.certFile,
        keyFile: certs.keyFile,
        settings: broken,
        logger: silent,
      });
      agent = agentFor(certs.ca);
      const res = await call(`https://127.0.0.1:${server.port}/mutate`, {
        method: 'POST',
        body: readFileSync(join(fixtureDir, 'review-deployment-pod.json')),
        dispatcher: agent,
      });
      expectProblem(res, 500, 'INTERNAL');
      expect(res.text).not.toContain('boom');
    } finally {
      await agent?.close();
      await server?.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('webhook start-up failures', () => {
  it('rejects when the certificate files are missing', async () => {
    await expect(
      startWebhookServer({ host: '127.0.0.1', port: 0, certFile: '/nonexistent/tls.crt', keyFile: '/nonexistent/tls.key', settings, logger: silent }),
    ).rejects.toThrow(/ENOENT/);
  });

  it('rejects when the key does not match the certificate', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'webhook-mismatch-'));
    try {
      const a = await makeCerts(join(dir, 'a'));
      const b = await makeCerts(join(dir, 'b'));
      await expect(
        startWebhookServer({ host: '127.0.0.1', port: 0, certFile: a.certFile, keyFile: b.keyFile, settings, logger: silent }),
      ).rejects.toThrow();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('webhookCommand (token-sidecar webhook)', () => {
  let dir: string;
  let certs: Certs;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'webhook-cli-'));
    certs = await makeCerts(join(dir, 'certs'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('serves until stopped, then returns 0', async () => {
    const controller = new AbortController();
    let port = 0;
    let listening: () => void = () => {};
    const isListening = new Promise<void>((resolve) => {
      listening = resolve;
    });
    const exitCode = webhookCommand(
      ['--listen', '127.0.0.1:0', '--tls-cert', certs.certFile, '--tls-key', certs.keyFile, '--native-sidecar', 'false'],
      {
        env: { TOKEN_SIDECAR_IMAGE: 'env.example/token-sidecar:9' },
        signal: controller.signal,
        logger: silent,
        onListening: (p) => {
          port = p;
          listening();
        },
      },
    );
    await isListening;

    const agent = agentFor(certs.ca);
    try {
      const res = await request(`https://127.0.0.1:${port}/mutate`, {
        method: 'POST',
        body: readFileSync(join(fixtureDir, 'review-deployment-pod.json')),
        dispatcher: agent,
      });
      const body = (await res.body.json()) as AdmissionResponseBody;
      const patch = JSON.parse(Buffer.from(body.response.patch ?? '', 'base64').toString()) as {
        path: string;
        value: { image?: string };
      }[];
      // Flags and env reached the settings: image from env, fallback mode from --native-sidecar false.
      expect(patch[0]?.path).toBe('/spec/containers/0');
      expect(patch[0]?.value.image).toBe('env.example/token-sidecar:9');
    } finally {
      await agent.close();
    }
    controller.abort();
    expect(await exitCode).toBe(0);
  });

  it('exit 1 on bad usage, 2 when it cannot start', async () => {
    const opts = { env: {}, logger: silent };
    const stderr = process.stderr.write;
    process.stderr.write = () => true;
    try {
      expect(await webhookCommand(['--bogus'], opts)).toBe(1);
      expect(await webhookCommand(['--listen', '127.0.0.1:0'], opts)).toBe(1); // no image
      expect(await webhookCommand(['--image', 'x', '--listen', 'nowhere'], opts)).toBe(1);
      expect(await webhookCommand(['--image', 'x', '--native-sidecar', 'maybe'], opts)).toBe(1);
      expect(await webhookCommand(['--image', 'x', '--memory-limit', 'lots'], opts)).toBe(1);
    } finally {
      process.stderr.write = stderr;
    }
    expect(
      await webhookCommand(['--image', 'x', '--listen', '127.0.0.1:0', '--tls-cert', '/nope', '--tls-key', '/nope'], opts),
    ).toBe(2);
  });

  // The real binary, once src/cli/main.ts routes `webhook` here and dist/ is built (npm test builds it).
  const mainSource = join(repoRoot, 'src/cli/main.ts');
  const mainBuilt = join(repoRoot, 'dist/token-sidecar.mjs');
  const wired =
    existsSync(mainSource) && readFileSync(mainSource, 'utf8').includes('webhookCommand') && existsSync(mainBuilt);
  it.skipIf(!wired)('`token-sidecar webhook` as a process: serves, then exits 0 on SIGTERM', async () => {
    const child = spawn(
      process.execPath,
      [mainBuilt, 'webhook', '--listen', '127.0.0.1:0', '--tls-cert', certs.certFile, '--tls-key', certs.keyFile],
      { env: { ...process.env, TOKEN_SIDECAR_IMAGE: 'registry.example/token-sidecar:0.1.0' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const port = await new Promise<number>((resolve, reject) => {
      let buffered = '';
      child.stdout.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        for (const line of buffered.split('\n')) {
          if (!line.includes('webhook.listening')) continue;
          resolve((JSON.parse(line) as { port: number }).port);
        }
      });
      child.once('exit', (code) => reject(new Error(`exited early with ${code}`)));
    });
    const agent = agentFor(certs.ca);
    try {
      const res = await request(`https://127.0.0.1:${port}/mutate`, {
        method: 'POST',
        body: readFileSync(join(fixtureDir, 'review-deployment-pod.json')),
        dispatcher: agent,
      });
      expect(res.statusCode).toBe(200);
      const body = (await res.body.json()) as AdmissionResponseBody;
      expect(body.response.patchType).toBe('JSONPatch');
    } finally {
      await agent.close();
    }
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});

describe('the fallback sidecar\'s postStart hold', () => {
  let readyz: Server;
  let calls = 0;
  beforeAll(async () => {
    // Not ready twice, then ready: the hook must keep polling and then exit 0.
    readyz = createServer((req, res) => {
      calls += 1;
      res.statusCode = req.url === '/readyz' && calls > 2 ? 200 : 503;
      res.end();
    });
    await new Promise<void>((resolve) => readyz.listen(0, '127.0.0.1', resolve));
  });
  afterAll(async () => {
    await new Promise((resolve) => readyz.close(resolve));
  });

  it('polls /readyz until it answers 200, then exits 0', async () => {
    const patch = (fixture('review-fallback.expected.json') as {
      patch: { value: { lifecycle?: { postStart: { exec: { command: string[] } } } } }[];
    }).patch;
    const command = patch[0]?.value.lifecycle?.postStart.exec.command ?? [];
    expect(command.slice(0, 2)).toEqual(['node', '-e']);
    // Same script, pointed at this test's port instead of the sidecar's fixed admin port.
    const port = (readyz.address() as AddressInfo).port;
    const source = (command[2] ?? '').replace('port:15081', `port:${port}`);
    const started = Date.now();
    const { stdout } = await run(process.execPath, ['-e', source], { timeout: 10_000 });
    expect(stdout).toBe('');
    expect(calls).toBe(3);
    expect(Date.now() - started).toBeGreaterThanOrEqual(400);
  });
});
