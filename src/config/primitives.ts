/**
 * The building blocks of the routes.yaml schema: durations with ranges, sizes, percentages, listen addresses,
 * secret references, URLs and TLS file sets. Units are parsed here; secrets stay references.
 */
import { z } from 'zod';
import { redactUrl } from './text.js';
import {
  formatDurationMs,
  MAX_TIMER_MS,
  parseDurationMs,
  parseListenAddress,
  parsePercent,
  parseSizeBytes,
} from './units.js';

function parsed<T>(parse: (s: string) => T | undefined, what: string) {
  return z.string({ error: `expected ${what}` }).transform((text, ctx) => {
    const value = parse(text);
    if (value === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${text}" is not ${what}` });
      return z.NEVER;
    }
    return value;
  });
}

const DURATION = 'a duration such as 500ms, 30s, 5m or 1h';

/**
 * The range of every duration key, in ms. A zero or tiny value would disable what it bounds (a timeout of 0 is "no
 * timeout" to undici, a lifetime of 0 is a token call per request); anything above MAX_TIMER_MS would fire at once.
 */
export const DURATION_RANGES_MS = {
  upstreamTimeout: { min: 100, max: 600_000 },
  tokenTimeout: { min: 100, max: 120_000 },
  defaultExpiresIn: { min: 10_000, max: 86_400_000 },
  maxLifetime: { min: 10_000, max: 604_800_000 },
  redisCall: { min: 10, max: 60_000 },
  lockLease: { min: 500, max: 300_000 },
  lockWaitTimeout: { min: 100, max: 600_000 },
  /** A waiter's store poll on memcached (no pub/sub): short enough to hand over a token fast, not a busy loop. */
  storePollInterval: { min: 10, max: 1_000 },
  listenerHeaders: { min: 1_000, max: 600_000 },
  listenerRequest: { min: 1_000, max: 3_600_000 },
  listenerKeepAlive: { min: 1_000, max: 600_000 },
  /** 0 is meaningful: no drain, in-flight requests are cut at once. */
  drainTimeout: { min: 0, max: 600_000 },
} as const satisfies Record<string, { min: number; max: number }>;

/** A duration in ms within `range`; the message names the range. */
export function durationIn(range: { min: number; max: number }) {
  if (range.max > MAX_TIMER_MS) throw new Error(`duration range above ${MAX_TIMER_MS} ms`);
  const allowed = `use ${formatDurationMs(range.min)} to ${formatDurationMs(range.max)}`;
  return z.string({ error: `expected ${DURATION}` }).transform((text, ctx) => {
    const ms = parseDurationMs(text);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${text}" is not ${DURATION}` });
      return z.NEVER;
    }
    if (ms < range.min || ms > range.max) {
      ctx.addIssue({ code: 'custom', message: `"${text}" is out of range: ${allowed}` });
      return z.NEVER;
    }
    return ms;
  });
}

export const percent = parsed(parsePercent, 'a percentage between 0% and 100% (exclusive), such as 20%');
export const listenAddress = parsed(
  parseListenAddress,
  'a listen address: use an IP address (127.0.0.1, [::1], 0.0.0.0) or localhost with a port',
);

export const sizeBytes = z
  .union([z.string(), z.number()], { error: 'expected a size such as 1MiB, 64KiB or a number of bytes' })
  .transform((value, ctx) => {
    const bytes = parseSizeBytes(value);
    if (bytes === undefined) {
      ctx.addIssue({ code: 'custom', message: `"${value}" is not a size (use 1MiB, 64KiB or bytes)` });
      return z.NEVER;
    }
    return bytes;
  });

/** A secret: a literal string, `{ fromEnv: NAME }` or `{ fromFile: PATH }`. */
export const secretRef = z.union(
  [
    z.string().min(1),
    z.strictObject({ fromEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'not an environment variable name') }),
    z.strictObject({ fromFile: z.string().min(1) }),
  ],
  { error: 'expected a string, { fromEnv: NAME } or { fromFile: PATH }' },
);
export type SecretRef = z.infer<typeof secretRef>;

export function httpUrl(opts: { allowQuery: boolean }) {
  return z.string({ error: 'expected a URL' }).transform((text, ctx) => {
    // Never echo userinfo: a refused URL is printed by validate and in reload logs.
    const shown = redactUrl(text);
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      ctx.addIssue({ code: 'custom', message: `"${shown}" is not a valid URL` });
      return z.NEVER;
    }
    const problems: string[] = [];
    if (url.protocol !== 'http:' && url.protocol !== 'https:') problems.push('must be http:// or https://');
    if (url.username || url.password) problems.push('must not carry credentials (use the auth block)');
    if (url.hash) problems.push('must not have a #fragment');
    if (!opts.allowQuery && url.search) problems.push('must not have a ?query (the request query is passed through)');
    for (const message of problems) ctx.addIssue({ code: 'custom', message: `"${shown}" ${message}` });
    return problems.length ? z.NEVER : url;
  });
}

/** Form fields the token request sets itself, and the setting that controls each. */
export const tlsFiles = z.strictObject({
  ca: secretRef.optional(),
  cert: secretRef.optional(),
  key: secretRef.optional(),
  servername: z.string().min(1).optional(),
});

export const hostPort = z.strictObject({
  host: z.string().min(1),
  port: z.number().int().min(1).max(65_535),
});
export type RawTls = z.output<typeof tlsFiles>;
