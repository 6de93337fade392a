/**
 * routes.yaml → Config. Every problem (YAML syntax, schema, unset env vars, unreadable files, insecure URLs) is
 * collected with its path and reported together, so one `validate` run shows everything to fix.
 */
import { isAbsolute, resolve, dirname } from 'node:path';
import type { z } from 'zod';
import { configSchema, type RawConfig, type RawRedis, type RawRoute, type RawTls, type SecretRef } from './schema.js';
import { Secret } from '../core/secret.js';
import type { Config, RedisStoreConfig, Route, StoreConfig, TlsMaterial } from './types.js';
import { CONFIG_FILE_MAX_BYTES, readFileDigest, SECRET_FILE_MAX_BYTES, unreadable, UNSETTLED_DIGEST, type FileDigests } from './files.js';
import { findUnsafeChar } from './text.js';
import { formatHostPort, isLoopbackHost, isLoopbackListenHost } from './units.js';
import { parseYaml } from './yaml.js';
import { credentialIdentity } from '../core/credential.js';

export type { FileDigests } from './files.js';

export type LoadResult =
  | { ok: true; config: Config; warnings: string[]; files: string[]; digests: FileDigests }
  | { ok: false; problems: string[]; files: string[]; digests: FileDigests };


/** Longest text of an unexpected error put in a problem. */
const ERROR_TEXT_MAX_CHARS = 300;

/** An unexpected error as problem text: `clean` (e.g. redaction) runs before the cut, so no secret is left half shown. */
export function errorText(err: unknown, clean: (text: string) => string = (text) => text): string {
  const text = clean(err instanceof Error ? `${err.name}: ${err.message}` : String(err));
  return text.length > ERROR_TEXT_MAX_CHARS ? `${text.slice(0, ERROR_TEXT_MAX_CHARS)}…` : text;
}

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out || '(root)';
}

export async function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<LoadResult> {
  return (await loadConfigSource(file, env)).result;
}

/**
 * loadConfigFile, and the text it loaded ('' if the file could not be read): the watcher keeps the last good one to
 * re-read it with rotated secrets.
 */
export async function loadConfigSource(
  file: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ result: LoadResult; text: string }> {
  const read = await readFileDigest(file, CONFIG_FILE_MAX_BYTES);
  if (read.content === undefined) {
    const digests = new Map([[file, read.digest]]);
    const problem = `${file}: ${unreadable(read.refusal, undefined, 'the config file')}`;
    return { result: { ok: false, problems: [problem], files: [file], digests }, text: '' };
  }
  const text = read.content.toString('utf8');
  const result = await loadConfigText(text, { env, baseDir: dirname(resolve(file)), fileName: file });
  return { result: { ...result, digests: mergeDigests(new Map([[file, read.digest]]), result.digests) }, text };
}

/** Both loads' reads; a file they saw with two contents is UNSETTLED_DIGEST. */
export function mergeDigests(a: FileDigests, b: FileDigests): Map<string, string> {
  const merged = new Map(a);
  for (const [file, digest] of b) noteDigest(merged, file, digest);
  return merged;
}

function noteDigest(digests: Map<string, string>, file: string, digest: string): void {
  const seen = digests.get(file);
  digests.set(file, seen === undefined || seen === digest ? digest : UNSETTLED_DIGEST);
}

/** Never rejects: whatever goes wrong in parsing is a problem of the file (exit 1, a refused reload), not a crash. */
export async function loadConfigText(
  text: string,
  opts: { env?: NodeJS.ProcessEnv; baseDir?: string; fileName?: string } = {},
): Promise<LoadResult> {
  const fileName = opts.fileName ?? 'routes.yaml';
  const resolver = new SecretResolver(opts.env ?? process.env, opts.baseDir ?? process.cwd());
  try {
    return await loadParsed(text, fileName, resolver);
  } catch (err) {
    return { ok: false, problems: [`${fileName}: cannot load: ${errorText(err)}`], files: resolver.files, digests: resolver.digests };
  }
}

async function loadParsed(text: string, fileName: string, resolver: SecretResolver): Promise<LoadResult> {
  const yaml = parseYaml(text, fileName);
  if (!yaml.ok) return { ok: false, problems: yaml.problems, files: [], digests: new Map() };
  const js = yaml.value;
  const parsed = configSchema.safeParse(js);
  if (!parsed.success) {
    // Report everything in one run: the schema problems, and also the secret references and plain-http URLs of
    // the parts that could be read.
    await checkRawSecrets(js, [], resolver);
    const problems = [...zodProblems(parsed.error), ...insecureUrls(js), ...resolver.problems];
    return { ok: false, problems, files: resolver.files, digests: resolver.digests };
  }
  const config = await build(parsed.data, resolver);
  const problems = [...insecureUrls(js), ...resolver.problems];
  if (problems.length > 0) return { ok: false, problems, files: resolver.files, digests: resolver.digests };
  const warnings = [...exposureWarnings(config), ...resolver.warnings];
  return { ok: true, config, warnings, files: resolver.files, digests: resolver.digests };
}

/** Said at every start (and validate): the schema refuses this unless allowExternalListen asks for it. */
function exposureWarnings(config: Config): string[] {
  if (isLoopbackListenHost(config.listen.host)) return [];
  return [`listen: ${formatHostPort(config.listen)} is reachable from outside the pod and has no authentication (allowExternalListen: true)`];
}

function zodProblems(error: z.ZodError): string[] {
  return error.issues.map((issue) => `${formatPath(issue.path)}: ${issue.message}`);
}

/**
 * Plain http is allowed only to loopback: elsewhere a token or secret would cross the network in clear. Reads the
 * raw document, so it also runs when the schema failed elsewhere.
 */
function insecureUrls(raw: unknown): string[] {
  const problems: string[] = [];
  const routes = isRecord(raw) && Array.isArray(raw['routes']) ? (raw['routes'] as unknown[]) : [];
  routes.forEach((r, i) => {
    if (!isRecord(r) || r['allowInsecureHttp'] === true) return;
    const check = (text: unknown, path: string) => {
      if (typeof text !== 'string' || !URL.canParse(text)) return;
      const url = new URL(text);
      if (url.protocol === 'http:' && !isLoopbackHost(url.hostname)) {
        problems.push(`routes[${i}].${path}: plain http to ${url.hostname} would send credentials in clear; use https or set allowInsecureHttp: true`);
      }
    };
    check(r['upstream'], 'upstream');
    const auth = r['auth'];
    if (isRecord(auth) && auth['type'] === 'oauth2') check(auth['tokenUrl'], 'auth.tokenUrl');
  });
  return problems;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Where a secret goes decides what it may contain (see SecretUse); the raw walk finds it by its path. */
function useAt(path: string): SecretUse | undefined {
  if (/^routes\[\d+\]\.auth\.value$/.test(path)) return 'header';
  if (/^routes\[\d+\]\.auth\.(clientId|clientSecret)$/.test(path)) return 'credential';
  return undefined;
}

/**
 * Every `{ fromEnv }` / `{ fromFile }` reference (and every literal header value or client credential) in a document
 * the schema refused, checked as build() would.
 */
async function checkRawSecrets(node: unknown, path: PropertyKey[], r: SecretResolver): Promise<void> {
  if (Array.isArray(node)) {
    for (const [i, v] of node.entries()) await checkRawSecrets(v, [...path, i], r);
    return;
  }
  if (typeof node === 'string') {
    const use = useAt(formatPath(path));
    if (use) await r.get(node, formatPath(path), { use });
    return;
  }
  if (!isRecord(node)) return;
  const keys = Object.keys(node);
  if (keys.length === 1 && (typeof node['fromEnv'] === 'string' || typeof node['fromFile'] === 'string')) {
    const at = formatPath(path);
    await r.get(node as SecretRef, at, { use: useAt(at) });
    return;
  }
  for (const k of keys) await checkRawSecrets(node[k], [...path, k], r);
}

/**
 * `header`: sent in a request header as it is (a static value), so it must be a valid field value. `credential`: a
 * client id or secret; a line break or control character there is never part of it (a file saved with a blank line
 * at its end) and would only come back as TOKEN_REJECTED.
 */
type SecretUse = 'header' | 'credential';

class SecretResolver {
  readonly problems: string[] = [];
  readonly warnings: string[] = [];
  readonly files: string[] = [];
  readonly digests = new Map<string, string>();

  constructor(
    private readonly env: NodeJS.ProcessEnv,
    private readonly baseDir: string,
  ) {}

  async get(ref: SecretRef, path: string, opts: { literalWarning?: boolean; use?: SecretUse | undefined } = {}): Promise<string> {
    if (typeof ref === 'string') {
      if (opts.literalWarning) this.warnings.push(`${path}: a literal value in the config file; prefer fromEnv or fromFile`);
      this.#checkUse(ref, path, '', opts.use);
      return ref;
    }
    if ('fromEnv' in ref) {
      const value = this.env[ref.fromEnv];
      if (value === undefined || value === '') this.problems.push(`${path}: environment variable ${ref.fromEnv} is not set`);
      else this.#checkUse(value, path, `environment variable ${ref.fromEnv} `, opts.use);
      return value ?? '';
    }
    const file = isAbsolute(ref.fromFile) ? ref.fromFile : resolve(this.baseDir, ref.fromFile);
    this.files.push(file);
    const read = await readFileDigest(file, SECRET_FILE_MAX_BYTES);
    noteDigest(this.digests, file, read.digest);
    if (read.content === undefined) {
      this.problems.push(`${path}: ${unreadable(read.refusal, ref.fromFile, 'a secret or certificate file')}`);
      return '';
    }
    // Secret files made with `echo` end in a newline that is not part of the secret (one: a second one is a mistake).
    const value = read.content.toString('utf8').replace(/\r?\n$/, '');
    if (value === '') this.problems.push(`${path}: ${ref.fromFile} is empty`);
    else this.#checkUse(value, path, `${ref.fromFile} `, opts.use, ' after its one trailing newline');
    return value;
  }

  /** Names the character class, never the value: this is a secret. */
  #checkUse(value: string, path: string, source: string, use: SecretUse | undefined, afterNewline = ''): void {
    if (!use) return;
    const bad = findUnsafeChar(value, { header: use === 'header' });
    if (!bad) return;
    const after = bad.what.startsWith('a line break') ? afterNewline : '';
    const why = use === 'header' ? 'a header value cannot carry it' : 'a client credential cannot carry it';
    this.problems.push(`${path}: ${source}contains ${bad.what}${after}; ${why}`);
  }

  async secret(ref: SecretRef, path: string, literalWarning = true, use?: SecretUse): Promise<Secret> {
    return new Secret(await this.get(ref, path, { literalWarning, use }));
  }

  async tls(raw: RawTls | undefined, path: string): Promise<TlsMaterial | undefined> {
    if (!raw) return undefined;
    const [ca, cert, key] = await Promise.all([
      raw.ca === undefined ? undefined : this.get(raw.ca, `${path}.ca`),
      raw.cert === undefined ? undefined : this.get(raw.cert, `${path}.cert`),
      raw.key === undefined ? undefined : this.secret(raw.key, `${path}.key`),
    ]);
    if ((cert === undefined) !== (key === undefined)) this.problems.push(`${path}: cert and key go together`);
    return { ca: ca || undefined, cert: cert || undefined, key, servername: raw.servername };
  }
}

async function build(raw: RawConfig, r: SecretResolver): Promise<Config> {
  const [routes, store] = await Promise.all([
    Promise.all(raw.routes.map((route, i) => buildRoute(route, `routes[${i}]`, r))),
    buildStore(raw.store, r),
  ]);
  return {
    listen: raw.listen,
    admin: raw.admin,
    allowExternalListen: raw.allowExternalListen,
    drainTimeoutMs: raw.drainTimeout,
    store,
    audit: raw.audit,
    routes,
  };
}

async function buildRoute(raw: RawRoute, path: string, r: SecretResolver): Promise<Route> {
  const base = raw.upstream.pathname.length > 1 ? raw.upstream.pathname.replace(/\/+$/, '') : '/';
  const upstreamTls = await r.tls(raw.upstreamTls, `${path}.upstreamTls`);
  let auth: Route['auth'];
  if (raw.auth.type === 'static') {
    auth = { type: 'static', value: await r.secret(raw.auth.value, `${path}.auth.value`, true, 'header') };
  } else {
    const a = raw.auth;
    const [clientId, clientSecret, tls] = await Promise.all([
      r.get(a.clientId, `${path}.auth.clientId`, { literalWarning: false, use: 'credential' }),
      r.secret(a.clientSecret, `${path}.auth.clientSecret`, true, 'credential'),
      r.tls(a.tls, `${path}.auth.tls`),
    ]);
    const partial = {
      type: 'oauth2' as const,
      grant: a.grant,
      tokenUrl: a.tokenUrl,
      clientId,
      clientSecret,
      clientAuth: a.clientAuth,
      scopes: a.scopes,
      audience: a.audience,
      resource: a.resource,
      params: a.params,
    };
    auth = {
      ...partial,
      tls,
      timeoutMs: a.timeout,
      refreshAheadRatio: a.refreshAhead,
      defaultExpiresInMs: a.defaultExpiresIn,
      maxLifetimeMs: a.maxLifetime,
      identity: credentialIdentity(partial),
    };
  }
  return {
    name: raw.name,
    match: { pathPrefix: raw.match.pathPrefix, host: raw.match.host },
    upstream: raw.upstream,
    upstreamOrigin: raw.upstream.origin,
    upstreamBasePath: base,
    upstreamTls,
    auth,
    inject: { header: raw.inject.header.toLowerCase(), format: raw.inject.format },
    retryOn401: raw.retryOn401,
    replayBodyLimitBytes: raw.replayBodyLimit,
    timeouts: { connectMs: raw.timeouts.connect, responseMs: raw.timeouts.response, idleMs: raw.timeouts.idle },
    warm: raw.warm,
    allowInsecureHttp: raw.allowInsecureHttp,
  };
}

async function buildStore(raw: RawConfig['store'], r: SecretResolver): Promise<StoreConfig> {
  if (raw.type === 'memory') return { type: 'memory' };
  const redis: RawRedis = raw.redis;
  const [password, sentinelPassword, tls, keys] = await Promise.all([
    redis.password === undefined ? undefined : r.secret(redis.password, 'store.redis.password'),
    redis.sentinelPassword === undefined ? undefined : r.secret(redis.sentinelPassword, 'store.redis.sentinelPassword'),
    r.tls(redis.tls, 'store.redis.tls'),
    Promise.all(
      (raw.encryption?.keys ?? []).map(async (k, i) => {
        const path = `store.encryption.keys[${i}].secret`;
        const text = await r.get(k.secret, path, { literalWarning: true });
        const key = Buffer.from(text.trim(), 'base64');
        if (text && key.length !== 32) r.problems.push(`${path}: must be 32 random bytes in base64 (got ${key.length} bytes)`);
        return { id: k.id, key };
      }),
    ),
  ]);
  const store: RedisStoreConfig = {
    type: 'redis',
    url: redis.url,
    sentinels: redis.sentinels,
    name: redis.name,
    sentinelPassword,
    cluster: redis.cluster,
    username: redis.username,
    password,
    tls,
    keyPrefix: redis.keyPrefix,
    commandTimeoutMs: redis.commandTimeout,
    coordinationTimeoutMs: redis.coordinationTimeout,
    lockLeaseMs: redis.lockLease,
    lockWaitTimeoutMs: redis.lockWaitTimeout,
    encryptionKeys: keys,
  };
  return store;
}
