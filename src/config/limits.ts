/**
 * Default listener limits (`limits.app`, `limits.admin` in routes.yaml; docs/operations.md, "Limits").
 */
import type { ListenerLimitsConfig } from './types.js';
// Node's defaults (60 s for headers, checked only every 30 s; 300 s
// for a request; no cap on connections) let slow or idle clients hold sockets and memory for minutes.

/** The app's request headers must all arrive within this (a slowloris is cut here, with 408). Apps on loopback send them in one write. */
export const PROXY_HEADERS_TIMEOUT_MS = 10_000;
/**
 * The whole request, body included, must arrive within this (408 if no answer started yet, else the connection is
 * cut). A streamed body moves as fast as the vendor takes it, so this bounds the longest upload: 2 min is ~120 MiB
 * at 1 MiB/s, far above the documents these APIs take, and still cuts a body that trickles.
 */
export const PROXY_REQUEST_TIMEOUT_MS = 120_000;
/**
 * Apps on localhost keep connections open; outlive typical client idle timeouts (60 s is common) so a reused socket
 * is never closed under a request in flight. Node closes an idle socket 1 s after this.
 */
export const PROXY_KEEP_ALIVE_TIMEOUT_MS = 65_000;
/**
 * Connections the app listener holds at once, idle keep-alive ones included; past it Node accepts and closes at once.
 * One pod's app rarely needs a few hundred; each costs a file descriptor and some kilobytes, so 1024 stays well inside
 * a sidecar's memory and fd limits.
 */
export const PROXY_MAX_CONNECTIONS = 1_024;
/** Admin requests (probes, scrapes, operators) are small: their headers get less time than the app's. */
export const ADMIN_HEADERS_TIMEOUT_MS = 5_000;
/** Admin requests have no body worth waiting for (a refresh's answer may take longer: only receiving the request counts). */
export const ADMIN_REQUEST_TIMEOUT_MS = 10_000;
/** Node's default, explicit: probes open a connection per check, Prometheus reconnects per scrape at worst. */
export const ADMIN_KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** The admin listener faces the pod network: kubelet probes, a scraper and operators need a handful, not hundreds. */
export const ADMIN_MAX_CONNECTIONS = 64;

/** Each listener's defaults, in the shape the config carries. */
export const APP_LIMIT_DEFAULTS: Readonly<ListenerLimitsConfig> = {
  headersTimeoutMs: PROXY_HEADERS_TIMEOUT_MS,
  requestTimeoutMs: PROXY_REQUEST_TIMEOUT_MS,
  keepAliveTimeoutMs: PROXY_KEEP_ALIVE_TIMEOUT_MS,
  maxConnections: PROXY_MAX_CONNECTIONS,
};
export const ADMIN_LIMIT_DEFAULTS: Readonly<ListenerLimitsConfig> = {
  headersTimeoutMs: ADMIN_HEADERS_TIMEOUT_MS,
  requestTimeoutMs: ADMIN_REQUEST_TIMEOUT_MS,
  keepAliveTimeoutMs: ADMIN_KEEP_ALIVE_TIMEOUT_MS,
  maxConnections: ADMIN_MAX_CONNECTIONS,
};
