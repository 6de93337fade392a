/**
 * The routes.yaml schema (version 1). Strict: unknown keys are errors, so a typo never silently means "default".
 * Units are parsed here (durations → ms, sizes → bytes, percentages → ratios); secrets stay references until
 * load.ts resolves them, so a schema error never needs a secret to be read.
 */
import { z } from 'zod';
import { findUnsafeChar, codePointName, redactUrl } from './text.js';
import { formatHostPort, isLoopbackListenHost } from './units.js';
import { auth } from './auth-schema.js';
import { ADMIN_LIMIT_DEFAULTS, APP_LIMIT_DEFAULTS } from './limits.js';
import type { ListenerLimitsConfig } from './types.js';
import { DURATION_RANGES_MS, durationIn, hostPort, httpUrl, listenAddress, secretRef, sizeBytes, tlsFiles } from './primitives.js';

export { DURATION_RANGES_MS, durationIn, type SecretRef, type RawTls } from './primitives.js';

const REPLAY_BODY_LIMIT_MAX_BYTES = 64 * 1024 * 1024;

const routeName = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'must be lowercase letters, digits and dashes (at most 63)');

const pathPrefix = z
  .string()
  .regex(/^\/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$/, 'must start with / and contain only plain path characters (no %, ?, #)')
  .refine((p) => !p.split('/').some((s) => s === '.' || s === '..'), 'must not contain . or .. segments')
  .refine((p) => !p.includes('//'), 'must not contain //')
  // `/pix/` and `/pix` mean the same prefix; keep one spelling so duplicates are found.
  .transform((p) => (p.length > 1 ? p.replace(/\/+$/, '') : p));

const matchHost = z
  .string()
  .regex(/^[a-z0-9.-]+(:\d{1,5})?$/i, 'must be a host name, optionally with :port')
  .transform((h) => h.toLowerCase());

const match = z
  .strictObject({ pathPrefix: pathPrefix.optional(), host: matchHost.optional() })
  .refine((m) => m.pathPrefix !== undefined || m.host !== undefined, 'needs pathPrefix, host, or both');

const HOP_OR_RESERVED = new Set([
  'host', 'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'content-length', 'expect',
]);

const inject = z.strictObject({
  header: z
    .string()
    .regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'not a valid header name')
    .refine((h) => !HOP_OR_RESERVED.has(h.toLowerCase()), 'cannot inject a hop-by-hop or framing header')
    .default('Authorization'),
  format: z
    .string()
    .refine((f) => f.includes('{token}'), 'must contain {token}')
    .superRefine((f, ctx) => {
      // Caught here, not as a 502 on every request when the header is built.
      const bad = findUnsafeChar(f, { header: true });
      if (!bad) return;
      const at = `(${codePointName(bad.codePoint)} at index ${bad.index})`;
      const message = bad.what === 'a character outside Latin-1'
        ? `must not contain characters outside Latin-1, which a header cannot carry ${at}`
        : `must not contain CR, LF, NUL or other control characters ${at}`;
      ctx.addIssue({ code: 'custom', message });
    })
    .default('Bearer {token}'),
});

const route = z.strictObject({
  name: routeName,
  match,
  upstream: httpUrl({ allowQuery: false }),
  upstreamTls: tlsFiles.optional(),
  auth,
  inject: inject.default({ header: 'Authorization', format: 'Bearer {token}' }),
  retryOn401: z.boolean().default(true),
  /**
   * Bodies up to this size are kept so a 401 can be replayed; larger or unsized bodies stream and are not replayed.
   * Each request in flight may hold this much memory, so it is capped (64 MiB).
   */
  replayBodyLimit: sizeBytes
    .refine((bytes) => bytes <= REPLAY_BODY_LIMIT_MAX_BYTES, `must be at most 64MiB (each request in flight may hold this much memory)`)
    .default(1024 * 1024),
  timeouts: z
    .strictObject({
      connect: durationIn(DURATION_RANGES_MS.upstreamTimeout).default(5_000),
      response: durationIn(DURATION_RANGES_MS.upstreamTimeout).default(30_000),
      idle: durationIn(DURATION_RANGES_MS.upstreamTimeout).default(60_000),
    })
    .default({ connect: 5_000, response: 30_000, idle: 60_000 }),
  warm: z.boolean().default(false),
  allowInsecureHttp: z.boolean().default(false),
  /** Allow `Upgrade: websocket` on this route (refused with a typed 400 otherwise). */
  websocket: z.boolean().default(false),
  /**
   * A route whose answers are long, quiet but live streams (server-sent events): `timeouts.idle` no longer cuts a
   * response body or an upgraded socket that is merely silent.
   */
  streaming: z.boolean().default(false),
  /**
   * HTTP/2 to the vendor. `true`: the vendor must agree to h2 (ALPN) and requests are multiplexed on a few connections;
   * `auto`: h2 is offered and used if the vendor picks it, HTTP/1.1 otherwise (one stream per connection, undici's rule).
   */
  http2: z.union([z.boolean(), z.literal('auto')], { error: 'must be true, false or auto' }).default(false),
});

/** The credentials have their own keys (`password` is a secret reference); a URL is printed and logged. */
const redisUrl = z.string({ error: 'expected a redis:// or rediss:// URL' }).superRefine((text, ctx) => {
  if (!/^rediss?:\/\//.test(text)) {
    ctx.addIssue({ code: 'custom', message: 'must start with redis:// or rediss://' });
    return;
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    ctx.addIssue({ code: 'custom', message: `"${redactUrl(text)}" is not a valid URL` });
    return;
  }
  if (url.username || url.password) {
    ctx.addIssue({
      code: 'custom',
      message: 'must not carry credentials (user:password@): set store.redis.username and store.redis.password (a secret, e.g. { fromEnv: REDIS_PASSWORD })',
    });
  }
});

const redis = z
  .strictObject({
    url: redisUrl.optional(),
    sentinels: z.array(hostPort).min(1).optional(),
    name: z.string().min(1).optional(),
    sentinelPassword: secretRef.optional(),
    cluster: z.array(hostPort).min(1).optional(),
    username: z.string().min(1).optional(),
    password: secretRef.optional(),
    tls: tlsFiles.optional(),
    keyPrefix: z.string().regex(/^[A-Za-z0-9:_.-]{0,64}$/, 'letters, digits and :_.- only').default('token-sidecar:'),
    /**
     * Deadline of any one Redis call. A call on a connection that is down fails at once, whatever this says: this is
     * how long a connected but late Redis is waited for.
     */
    commandTimeout: durationIn(DURATION_RANGES_MS.redisCall).default(1_000),
    /**
     * Store time one token refresh may spend coordinating with the fleet (its reads and lock calls together, not the
     * wait for another pod's token call); past it the pod fetches for itself.
     */
    coordinationTimeout: durationIn(DURATION_RANGES_MS.redisCall).default(1_000),
    /** Refresh lock lease; renewed while the holder's fetch runs, so a dead holder costs at most one lease. */
    lockLease: durationIn(DURATION_RANGES_MS.lockLease).default(5_000),
    /** How long a pod that lost the lock race waits for the winner before fetching itself. */
    lockWaitTimeout: durationIn(DURATION_RANGES_MS.lockWaitTimeout).default(15_000),
  })
  .superRefine((r, ctx) => {
    const modes = [r.url, r.sentinels, r.cluster].filter((m) => m !== undefined).length;
    if (modes !== 1) ctx.addIssue({ code: 'custom', message: 'set exactly one of url, sentinels (with name) or cluster' });
    if (r.sentinels && !r.name) ctx.addIssue({ code: 'custom', path: ['name'], message: 'sentinels need the master name' });
  });

/** A memcached server: `host:port`, `[v6 address]:port`, or `{ host, port }`. */
const memcachedServer = z.union(
  [
    z.string().transform((text, ctx) => {
      const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
      const port = Number(m?.[3]);
      if (!m || port < 1 || port > 65_535) {
        ctx.addIssue({ code: 'custom', message: `"${text}" is not host:port` });
        return z.NEVER;
      }
      return { host: m[1] ?? m[2] ?? '', port };
    }),
    hostPort,
  ],
  { error: 'expected "host:port" or { host, port }' },
);

const memcached = z
  .strictObject({
    servers: z.array(memcachedServer).min(1, 'at least one server'),
    keyPrefix: z.string().regex(/^[A-Za-z0-9:_.-]{0,64}$/, 'letters, digits and :_.- only').default('token-sidecar:'),
    /** Deadline of any one memcached call; a server without a connection fails at once. */
    commandTimeout: durationIn(DURATION_RANGES_MS.redisCall).default(1_000),
    /** Store time one refresh may spend finding out who fetches; past it the pod fetches for itself. */
    coordinationTimeout: durationIn(DURATION_RANGES_MS.redisCall).default(1_000),
    /** Refresh lock lease (memcached rounds it up to whole seconds, plus one). */
    lockLease: durationIn(DURATION_RANGES_MS.lockLease).default(5_000),
    lockWaitTimeout: durationIn(DURATION_RANGES_MS.lockWaitTimeout).default(15_000),
    /** How often a pod waiting for another pod's refresh reads the store: memcached has no pub/sub. */
    pollInterval: durationIn(DURATION_RANGES_MS.storePollInterval).default(50),
  })
  .superRefine((m, ctx) => {
    // A server listed twice would hold twice its share of the keys.
    const seen = new Set<string>();
    m.servers.forEach((s, i) => {
      const id = `${s.host.toLowerCase()}:${s.port}`;
      if (seen.has(id)) ctx.addIssue({ code: 'custom', path: ['servers', i], message: `${id} is listed twice` });
      seen.add(id);
    });
  });

const encryption = z.strictObject({
  keys: z
    .array(z.strictObject({ id: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'letters, digits and ._- only'), secret: secretRef }))
    .min(1, 'at least one key'),
});

const store = z.discriminatedUnion(
  'type',
  [
    z.strictObject({ type: z.literal('memory') }),
    z.strictObject({ type: z.literal('redis'), redis, encryption: encryption.optional() }),
    z.strictObject({ type: z.literal('memcached'), memcached, encryption: encryption.optional() }),
  ],
  { error: 'store.type must be memory, redis or memcached' },
);

/** Defaults and why: src/config/limits.ts. Parsed to the config's shape (ms), so load.ts only copies it. */
function listenerLimits(d: Readonly<ListenerLimitsConfig>) {
  return z
    .strictObject({
      headersTimeout: durationIn(DURATION_RANGES_MS.listenerHeaders).default(d.headersTimeoutMs),
      requestTimeout: durationIn(DURATION_RANGES_MS.listenerRequest).default(d.requestTimeoutMs),
      keepAliveTimeout: durationIn(DURATION_RANGES_MS.listenerKeepAlive).default(d.keepAliveTimeoutMs),
      maxConnections: z.number().int().min(1).max(65_536).default(d.maxConnections),
    })
    .transform((l): ListenerLimitsConfig => ({
      headersTimeoutMs: l.headersTimeout,
      requestTimeoutMs: l.requestTimeout,
      keepAliveTimeoutMs: l.keepAliveTimeout,
      maxConnections: l.maxConnections,
    }))
    // An absent block is parsed like an empty one: the defaults above fill it.
    .prefault({});
}

const limits = z.strictObject({ app: listenerLimits(APP_LIMIT_DEFAULTS), admin: listenerLimits(ADMIN_LIMIT_DEFAULTS) }).prefault({});

export const configSchema = z
  .strictObject({
    version: z.literal(1, { error: 'version must be 1' }),
    listen: listenAddress.default({ host: '127.0.0.1', port: 15080 }),
    admin: listenAddress.default({ host: '0.0.0.0', port: 15081 }),
    /** The app port has no authentication: listening beyond loopback must be asked for. */
    allowExternalListen: z.boolean().default(false),
    /** Bound on the graceful drain at shutdown. */
    drainTimeout: durationIn(DURATION_RANGES_MS.drainTimeout).default(10_000),
    /** Slow and idle clients, and connections at once, per listener. */
    limits,
    store: store.default({ type: 'memory' }),
    /** Where token lifecycle (audit) events go: `stdout` (with the other logs), `stderr`, or a file path. */
    audit: z.strictObject({ destination: z.string().min(1).default('stdout') }).default({ destination: 'stdout' }),
    routes: z.array(route).min(1, 'at least one route'),
  })
  .superRefine(
    (cfg, ctx) => {
      // Runs even when other parts of the file failed (see `when`), so duplicates are reported together with every
      // other problem; the value may then be partly invalid, so it is read defensively.
      const obj = (v: unknown): Record<string, unknown> | undefined =>
        typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
      const listen = obj(cfg.listen);
      if (cfg.allowExternalListen !== true && typeof listen?.['host'] === 'string' && typeof listen['port'] === 'number') {
        const address = { host: listen['host'], port: listen['port'] };
        if (!isLoopbackListenHost(address.host)) {
          ctx.addIssue({
            code: 'custom',
            path: ['listen'],
            message: `${formatHostPort(address)} is not a loopback address: the app port has no authentication, so anyone who reaches it can use the routes' credentials; listen on 127.0.0.1 or set allowExternalListen: true`,
          });
        }
      }
      const routes: unknown[] = Array.isArray(cfg.routes) ? cfg.routes : [];
      const names = new Map<string, number>();
      const matches = new Map<string, number>();
      routes.forEach((value, i) => {
        const r = obj(value);
        if (!r) return;
        const name = r['name'];
        if (typeof name === 'string') {
          const firstName = names.get(name);
          if (firstName !== undefined) {
            ctx.addIssue({ code: 'custom', path: ['routes', i, 'name'], message: `duplicate route name "${name}" (routes[${firstName}])` });
          } else names.set(name, i);
        }
        const m = obj(r['match']);
        if (!m) return;
        const host = typeof m['host'] === 'string' ? m['host'].toLowerCase() : '*';
        const rawPrefix = typeof m['pathPrefix'] === 'string' ? m['pathPrefix'] : '/';
        const prefix = rawPrefix.length > 1 ? rawPrefix.replace(/\/+$/, '') || '/' : rawPrefix;
        const key = `${host} ${prefix}`;
        const firstMatch = matches.get(key);
        if (firstMatch !== undefined) {
          ctx.addIssue({ code: 'custom', path: ['routes', i, 'match'], message: `same match as routes[${firstMatch}]` });
        } else matches.set(key, i);
      });
      const store = obj(cfg.store);
      const keys = obj(store?.['encryption'])?.['keys'];
      if ((store?.['type'] === 'redis' || store?.['type'] === 'memcached') && Array.isArray(keys)) {
        const ids = new Set<string>();
        keys.forEach((k: unknown, i) => {
          const id = obj(k)?.['id'];
          if (typeof id !== 'string') return;
          if (ids.has(id)) ctx.addIssue({ code: 'custom', path: ['store', 'encryption', 'keys', i, 'id'], message: `duplicate key id "${id}"` });
          ids.add(id);
        });
      }
    },
    { when: (payload) => typeof payload.value === 'object' && payload.value !== null },
  );

export type RawConfig = z.output<typeof configSchema>;
export type RawRoute = RawConfig['routes'][number];
export type RawRedis = z.output<typeof redis>;
export type RawMemcached = z.output<typeof memcached>;
