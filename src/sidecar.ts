/**
 * The running sidecar: one config → token keeping (wiring.ts), forwarder, the app listener and the admin listener. The CLI runs
 * one of these per process; tests run them in-process or as child processes.
 */
import { createServer, type Server, type ServerOptions } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from './http/undici.js';
import type { Config, ListenerLimitsConfig } from './config/types.js';
import type { Logger } from './log.js';
import type { TokenFetcher } from './oauth/client.js';
import type { TokenStore } from './store/store.js';
import type { TokenManager } from './tokens/manager.js';
import { createTokenKeeping, type TokenKeeping } from './wiring.js';
import { Forwarder } from './proxy/forward.js';
import { buildRouteTable } from './proxy/match.js';
import { ProxyHandler } from './proxy/server.js';
import { tunnelHandler } from './proxy/tunnel.js';
import type { AccessLog } from './proxy/access-log.js';
import { answerClientError } from './http/problem.js';
import { createAdminServer, type Readiness } from './admin/server.js';
import { adminApi } from './admin/api.js';
import { Metrics } from './admin/metrics.js';

/** Longest a start waits for the shared store before listening anyway. */
export const STORE_START_WAIT_MS = 1_000;

/** How often Node looks for requests past headersTimeout/requestTimeout: they are enforced to within this (Node's default is 30 s). */
export const TIMEOUT_CHECK_INTERVAL_MS = 1_000;
/** At most one `connections.dropped` warning per listener per this long (the count says how many). */
export const DROPPED_LOG_INTERVAL_MS = 10_000;

/** One listener's settings: the config's, and how often timeouts are checked. `Sidecar.start` takes overrides (tests use small ones). */
export interface ListenerLimits extends ListenerLimitsConfig {
  timeoutCheckIntervalMs: number;
}

export interface SidecarOptions {
  config: Config;
  log: Logger;
  /** The per-request log line (default: through `log`). */
  accessLog?: AccessLog;
  store?: TokenStore;
  fetcher?: TokenFetcher;
  /** Overrides of the listener limits (for tests; production runs on `config.limits`). */
  limits?: { proxy?: Partial<ListenerLimits>; admin?: Partial<ListenerLimits> };
}

export class Sidecar {
  #draining = false;
  #listening = false;
  #config: Config;

  private constructor(
    config: Config,
    readonly log: Logger,
    readonly store: TokenStore,
    readonly manager: TokenManager,
    readonly metrics: Metrics,
    private readonly handler: ProxyHandler,
    private readonly forwarder: Forwarder,
    private readonly keeping: TokenKeeping,
    private readonly proxyServer: Server,
    private readonly adminServer: Server,
  ) {
    this.#config = config;
  }

  get config(): Config {
    return this.#config;
  }

  static async start(opts: SidecarOptions): Promise<Sidecar> {
    const { config, log } = opts;
    // The metrics read the manager and store lazily, so they can exist before both.
    let keeping: TokenKeeping | undefined;
    let store: TokenStore | undefined;
    const metrics = new Metrics({ expiries: () => keeping?.manager.expiries() ?? new Map(), storeUp: () => store?.health() === 'ok' });
    keeping = await createTokenKeeping(config, {
      log,
      storeWaitMs: STORE_START_WAIT_MS,
      store: opts.store,
      fetcher: opts.fetcher,
      storeObserver: metrics.store,
      tokenObserver: metrics.tokens,
      onStore: (s) => (store = s),
    });
    if (!keeping.storeReady) {
      log.warn({ event: 'store.unavailable_at_start', waitedMs: STORE_START_WAIT_MS }, 'store not reachable yet; serving with per-pod fetches until it is');
    }
    const { manager } = keeping;
    const forwarder = new Forwarder();
    const handler = new ProxyHandler({ manager, forwarder, log, ...(opts.accessLog ? { accessLog: opts.accessLog } : {}), observer: metrics.requests }, { table: buildRouteTable(config.routes) });
    const checked = { timeoutCheckIntervalMs: TIMEOUT_CHECK_INTERVAL_MS };
    const proxyLimits = { ...checked, ...config.limits.app, ...opts.limits?.proxy };
    const adminLimits = { ...checked, ...config.limits.admin, ...opts.limits?.admin };
    const proxyServer = createServer(serverOptions(proxyLimits), handler.handle);
    // RFC 9110 §10.1.1: a client that sent `Expect: 100-continue` waits before sending its body; the exchange sends
    // 100 only once it will read the body, so an unmatched or refused request is answered without the upload.
    proxyServer.on('checkContinue', handler.handleExpectContinue);
    proxyServer.on('connect', tunnelHandler(proxyServer, handler.currentTable, log));
    proxyServer.on('clientError', answerClientError);
    proxyServer.on('upgrade', handler.upgradeListener(proxyServer));
    guardConnections(proxyServer, proxyLimits, log, 'listen');
    let sidecar: Sidecar | undefined;
    const api = adminApi({ metrics, manager, routes: () => sidecar?.config.routes ?? config.routes });
    const adminServer = createAdminServer(
      {
        readiness: () => sidecar?.readiness() ?? { ready: false, checks: { starting: 'failing' } },
        extra: api,
      },
      serverOptions(adminLimits),
    );
    guardConnections(adminServer, adminLimits, log, 'admin');
    sidecar = new Sidecar(config, log, keeping.store, manager, metrics, handler, forwarder, keeping, proxyServer, adminServer);
    try {
      await listen(proxyServer, config.listen.host, config.listen.port, 'listen');
      await listen(adminServer, config.admin.host, config.admin.port, 'admin');
    } catch (err) {
      await sidecar.stop(0);
      throw err;
    }
    await primeHttpPaths(sidecar.adminUrl);
    sidecar.#listening = true;
    log.info({ event: 'listening', proxy: sidecar.proxyUrl, admin: sidecar.adminUrl, store: keeping.store.kind, routes: config.routes.length }, 'token-sidecar listening');
    for (const r of config.routes) {
      if (r.allowInsecureHttp) log.warn({ route: r.name }, 'allowInsecureHttp is set: credentials may cross the network in clear');
    }
    void manager.warmUp();
    return sidecar;
  }

  get proxyUrl(): string {
    return urlOf(this.proxyServer);
  }

  get adminUrl(): string {
    return urlOf(this.adminServer);
  }

  /**
   * Swap in a reloaded config. Requests already running finish on the routes they matched; tokens of unchanged
   * credentials are kept; a route whose credentials changed gets a new cache key, so its old token is never served.
   * Listeners (and their limits), the store and the audit destination are fixed at start: changing them needs a restart.
   */
  apply(next: Config): void {
    const fixed = (['listen', 'admin', 'limits', 'store', 'audit'] as const).filter((k) => JSON.stringify(next[k]) !== JSON.stringify(this.#config[k]));
    if (fixed.length > 0) this.log.warn({ event: 'config.restart_needed', keys: fixed }, `changes to ${fixed.join(', ')} take effect after a restart`);
    const applied: Config = { ...next, listen: this.#config.listen, admin: this.#config.admin, limits: this.#config.limits, store: this.#config.store, audit: this.#config.audit };
    this.manager.setRoutes(applied.routes);
    this.handler.setSnapshot({ table: buildRouteTable(applied.routes) });
    this.forwarder.retain(applied.routes);
    this.#config = applied;
    void this.manager.warmUp();
    this.log.info({ event: 'config.reloaded', routes: applied.routes.map((r) => r.name) }, 'config reloaded');
  }

  readiness(): Readiness {
    const warm = this.manager.warmRoutesReady();
    const checks: Readiness['checks'] = {
      listener: this.#listening ? 'ok' : 'failing',
      draining: this.#draining ? 'failing' : 'ok',
      warmRoutes: warm ? 'ok' : 'failing',
      // A degraded store never makes the pod unready: requests still flow from memory and per-pod fetches.
      store: this.store.health(),
    };
    return { ready: this.#listening && !this.#draining && warm, checks };
  }

  /** Stop accepting, let in-flight requests finish (bounded), then release everything. */
  async stop(drainTimeoutMs = this.#config.drainTimeoutMs): Promise<void> {
    this.#draining = true;
    // Upgraded sockets (WebSocket) are no longer the server's: closeAllConnections() never reaches them, and close()
    // would wait for them. Closed at once, so the app reconnects (to a pod that is not leaving).
    this.handler.closeUpgrades();
    await closeGracefully(this.proxyServer, drainTimeoutMs);
    await closeGracefully(this.adminServer, 0);
    await Promise.allSettled([this.forwarder.close(), this.keeping.close()]);
  }
}

/**
 * Run an undici request once against our own admin listener, so the first real (cold) request does not also pay
 * for compiling undici's HTTP/1.1 client (its llhttp WebAssembly parser, connect and write paths): on a fresh
 * process that is ~20 ms of every waiter's latency.
 */
async function primeHttpPaths(adminUrl: string): Promise<void> {
  const pool = new Pool(adminUrl);
  try {
    const res = await pool.request({ path: '/healthz', method: 'GET' });
    await res.body.text();
  } catch {
    // Only an optimisation.
  } finally {
    await pool.destroy();
  }
}

function serverOptions(limits: ListenerLimits): ServerOptions {
  return {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    connectionsCheckingInterval: limits.timeoutCheckIntervalMs,
  };
}

/**
 * Cap the listener's connections. Past the cap Node accepts and closes at once (the client sees its connection
 * closed or reset before any byte); that is logged, at most once per DROPPED_LOG_INTERVAL_MS, with a count.
 */
function guardConnections(server: Server, limits: ListenerLimits, log: Logger, listener: string): void {
  server.maxConnections = limits.maxConnections;
  let dropped = 0;
  let lastLogMs = -Infinity;
  server.on('drop', () => {
    dropped++;
    const nowMs = performance.now();
    if (nowMs - lastLogMs < DROPPED_LOG_INTERVAL_MS) return;
    lastLogMs = nowMs;
    log.warn({ event: 'connections.dropped', listener, dropped, maxConnections: limits.maxConnections }, `${listener}: connection refused, at maxConnections`);
    dropped = 0;
  });
}

function urlOf(server: Server): string {
  const a = server.address() as AddressInfo | null;
  if (!a) return '';
  return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
}

function listen(server: Server, host: string, port: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => reject(new ListenError(`${what} ${host}:${port}: ${err.code ?? err.message}`));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

export class ListenError extends Error {
  override name = 'ListenError';
}

async function closeGracefully(server: Server, timeoutMs: number): Promise<void> {
  if (!server.listening) return;
  await new Promise<void>((resolve) => {
    const idle = setInterval(() => server.closeIdleConnections(), 100);
    const force = setTimeout(() => server.closeAllConnections(), timeoutMs);
    server.close(() => {
      clearInterval(idle);
      clearTimeout(force);
      resolve();
    });
    server.closeIdleConnections();
  });
}
