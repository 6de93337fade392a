/** Parsers for the human units routes.yaml uses. Pure; each returns undefined on bad input so the schema reports it. */
import { BlockList, isIP } from 'node:net';

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/;
const DURATION_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/** `500ms`, `30s`, `1.5m`, `2h` → milliseconds (an integer). */
export function parseDurationMs(text: string): number | undefined {
  const m = DURATION.exec(text.trim());
  if (!m) return undefined;
  const value = Number(m[1]) * (DURATION_MS[m[2] ?? ''] ?? Number.NaN);
  return Number.isFinite(value) ? Math.round(value) : undefined;
}

/** Node's timers hold at most this (2^31 − 1 ms, ~24.8 days); a longer delay fires after 1 ms instead. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** 600000 → `10m`: the largest unit that writes the value exactly, as a user would type it back. */
export function formatDurationMs(ms: number): string {
  for (const [unit, factor] of [['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) {
    if (ms !== 0 && ms % factor === 0) return `${ms / factor}${unit}`;
  }
  return `${ms}ms`;
}

const SIZE = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$/;
const SIZE_BYTES: Record<string, number> = {
  B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, KB: 1000, MB: 1000 ** 2, GB: 1000 ** 3,
};

/** `1MiB`, `64KiB`, `512` (bytes) → bytes. */
export function parseSizeBytes(text: string | number): number | undefined {
  if (typeof text === 'number') return Number.isSafeInteger(text) && text >= 0 ? text : undefined;
  const m = SIZE.exec(text.trim());
  if (!m) return undefined;
  const value = Number(m[1]) * (SIZE_BYTES[m[2] ?? 'B'] ?? Number.NaN);
  return Number.isFinite(value) ? Math.floor(value) : undefined;
}

/** `20%` → 0.2. Only 0 < p < 100 makes sense for a refresh-ahead share. */
export function parsePercent(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)%$/.exec(text.trim());
  if (!m) return undefined;
  const value = Number(m[1]) / 100;
  return value > 0 && value < 1 ? value : undefined;
}

/**
 * `127.0.0.1:15080`, `[::1]:15080`, `localhost:15080`, `:15080` → host and port (port 0 means "pick a free one").
 * Only IP literals and `localhost`: a name would be resolved at start, and a typo fail only then.
 */
export function parseListenAddress(text: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65_535) return undefined;
  const host = m[1] ?? (m[2] === '' || m[2] === undefined ? '0.0.0.0' : m[2]);
  if (host.toLowerCase() === 'localhost') return { host: 'localhost', port };
  if (m[1] !== undefined ? isIP(host) !== 6 : isIP(host) !== 4) return undefined;
  return { host, port };
}

/** `{ host: '::', port: 1 }` → `[::]:1`, as it is written in routes.yaml. */
export function formatHostPort(address: { host: string; port: number }): string {
  return `${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`;
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** A listen host only this machine (this pod's network namespace) can reach: 127.0.0.0/8 (also v4-mapped), ::1, localhost. */
export function isLoopbackListenHost(host: string): boolean {
  if (host === 'localhost') return true;
  const family = isIP(host);
  return family !== 0 && LOOPBACK.check(host, family === 6 ? 'ipv6' : 'ipv4');
}

/** Loopback hosts, where plain http cannot expose a secret to the network. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127(?:\.\d{1,3}){3}$/.test(h);
}
