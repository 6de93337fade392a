/**
 * routes.yaml → Config. Every problem (YAML syntax, schema, unset env vars, unreadable files, insecure URLs) is
 * collected with its path and reported together, so one `validate` run shows everything to fix.
 */
import { resolve, dirname } from 'node:path';
import type { z } from 'zod';
import { configSchema, type RawConfig, type RawMemcached, type RawRedis, type RawRoute, type SecretRef } from './schema.js';
import type { Config, MemcachedStoreConfig, RedisStoreConfig, Route, StoreConfig } from './types.js';
import { CONFIG_FILE_MAX_BYTES, readFileDigest, unreadable, type FileDigests } from './files.js';
import { noteDigest, SecretResolver, type SecretUse } from './secrets.js';
import { formatHostPort, isLoopbackHost, isLoopbackListenHost } from './units.js';
import { parseYaml } from './yaml.js';
import { buildOAuth2 } from './build-auth.js';
import { parseSigningKey } from '../core/signing-key.js';

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

const SIGNING_KEY_PATH = /^routes\[\d+\]\.auth\.(privateKey|assertion\.privateKey|dpop\.key)$/;

/** Where a secret goes decides what it may contain (see SecretUse); the raw walk finds it by its path. */
function useAt(path: string): SecretUse | undefined {
  if (/^routes\[\d+\]\.auth\.value$/.test(path)) return 'header';
  if (/^routes\[\d+\]\.auth\.(clientId|clientSecret|refreshToken)$/.test(path)) return 'credential';
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
    const text = await r.get(node as SecretRef, at, { use: useAt(at) });
    // A signing key that is no key is said now too (its algorithm is checked once the schema passes).
    if (text && SIGNING_KEY_PATH.test(at)) {
      const parsed = parseSigningKey(text);
      if (!parsed.ok) r.problems.push(`${at}: ${parsed.problem}`);
    }
    return;
  }
  for (const k of keys) await checkRawSecrets(node[k], [...path, k], r);
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
    limits: raw.limits,
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
    auth = await buildOAuth2(raw.auth, path, r, upstreamTls);
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
    websocket: raw.websocket,
    streaming: raw.streaming,
    http2: raw.http2,
  };
}

async function buildStore(raw: RawConfig['store'], r: SecretResolver): Promise<StoreConfig> {
  if (raw.type === 'memory') return { type: 'memory' };
  if (raw.type === 'memcached') return buildMemcachedStore(raw.memcached, raw.encryption, r);
  const redis: RawRedis = raw.redis;
  const [password, sentinelPassword, tls, keys] = await Promise.all([
    redis.password === undefined ? undefined : r.secret(redis.password, 'store.redis.password'),
    redis.sentinelPassword === undefined ? undefined : r.secret(redis.sentinelPassword, 'store.redis.sentinelPassword'),
    r.tls(redis.tls, 'store.redis.tls'),
    encryptionKeys(raw.encryption, r),
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

async function buildMemcachedStore(m: RawMemcached, encryption: RawEncryption, r: SecretResolver): Promise<MemcachedStoreConfig> {
  return {
    type: 'memcached',
    servers: m.servers,
    keyPrefix: m.keyPrefix,
    commandTimeoutMs: m.commandTimeout,
    coordinationTimeoutMs: m.coordinationTimeout,
    lockLeaseMs: m.lockLease,
    lockWaitTimeoutMs: m.lockWaitTimeout,
    pollIntervalMs: m.pollInterval,
    encryptionKeys: await encryptionKeys(encryption, r),
  };
}

type RawEncryption = Exclude<RawConfig['store'], { type: 'memory' }>['encryption'];

/** `store.encryption.keys`, resolved: each secret is 32 random bytes in base64. */
function encryptionKeys(encryption: RawEncryption, r: SecretResolver): Promise<{ id: string; key: Buffer }[]> {
  return Promise.all(
    (encryption?.keys ?? []).map(async (k, i) => {
      const path = `store.encryption.keys[${i}].secret`;
      const text = await r.get(k.secret, path, { literalWarning: true });
      const key = Buffer.from(text.trim(), 'base64');
      if (text && key.length !== 32) r.problems.push(`${path}: must be 32 random bytes in base64 (got ${key.length} bytes)`);
      return { id: k.id, key };
    }),
  );
}
