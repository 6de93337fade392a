/**
 * Prometheus metrics (prom-client), named as in the contract. Labels are route names, status codes and small fixed
 * sets only: never a path, a token, a secret or anything else with unbounded values. Hot-path children are cached so
 * a request costs a map lookup, not a label hash.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestObserver } from '../proxy/server.js';
import type { RedisStoreObserver } from '../store/redis.js';
import type { TokenObserver } from '../tokens/manager.js';
import type { TokenEndpointError } from '../oauth/response.js';
import type { Token } from '../tokens/token.js';

const P = 'token_sidecar_';
const NO_ROUTE = 'none';

export interface ExpirySource {
  /** Route name → token expiry in ms (only routes holding a usable token). */
  expiries(): Map<string, number>;
  storeUp(): boolean;
}

export class Metrics {
  readonly registry = new Registry();
  readonly #requests = new Counter({ name: `${P}requests_total`, help: 'Requests handled, by route and HTTP status', labelNames: ['route', 'code'] as const, registers: [this.registry] });
  readonly #duration = new Histogram({
    name: `${P}request_duration_seconds`,
    help: 'Time from request to the end of the answer, by route',
    labelNames: ['route'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly #fetches = new Counter({ name: `${P}token_fetches_total`, help: 'Calls to the token endpoint, by route and result (success, rejected, unavailable)', labelNames: ['route', 'result'] as const, registers: [this.registry] });
  readonly #lookups = new Counter({ name: `${P}token_cache_lookups_total`, help: 'Token cache lookups by layer (memory, store) and result (hit, miss)', labelNames: ['route', 'layer', 'result'] as const, registers: [this.registry] });
  readonly #refresh = new Histogram({ name: `${P}token_refresh_duration_seconds`, help: 'Duration of token endpoint calls', labelNames: ['route'] as const, buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [this.registry] });
  readonly #lockWait = new Histogram({ name: `${P}lock_wait_seconds`, help: "Time a pod waited for another pod's refresh", labelNames: ['route'] as const, buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15], registers: [this.registry] });
  readonly #unauthorized = new Counter({ name: `${P}upstream_unauthorized_total`, help: 'Vendor 401 answers, by whether the request was replayed', labelNames: ['route', 'replayed'] as const, registers: [this.registry] });
  readonly #storeErrors = new Counter({ name: `${P}store_errors_total`, help: 'Failed or skipped store calls, and unreadable values, by operation', labelNames: ['op'] as const, registers: [this.registry] });
  readonly #requestChildren = new Map<string, Map<number, Counter.Internal>>();
  readonly #durationChildren = new Map<string, Histogram.Internal<'route'>>();
  readonly #lookupChildren = new Map<string, Counter.Internal>();
  readonly #memoryHitChildren = new Map<string, Counter.Internal>();

  constructor(source: ExpirySource, opts: { defaultMetrics?: boolean } = {}) {
    new Gauge({
      name: `${P}token_expiry_seconds`,
      help: 'Seconds until the current token of each route expires',
      labelNames: ['route'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        const now = Date.now();
        for (const [route, expiresAtMs] of source.expiries()) this.set({ route }, Math.max(0, (expiresAtMs - now) / 1000));
      },
    });
    new Gauge({
      name: `${P}store_up`,
      help: '1 when the shared store answers (always 1 for the memory store)',
      registers: [this.registry],
      collect() {
        this.set(source.storeUp() ? 1 : 0);
      },
    });
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  readonly requests: RequestObserver = {
    completed: (route, status, durationS) => {
      const name = route ?? NO_ROUTE;
      let byStatus = this.#requestChildren.get(name);
      if (!byStatus) this.#requestChildren.set(name, (byStatus = new Map()));
      let counter = byStatus.get(status);
      if (!counter) byStatus.set(status, (counter = this.#requests.labels(name, String(status))));
      counter.inc();
      let histogram = this.#durationChildren.get(name);
      if (!histogram) this.#durationChildren.set(name, (histogram = this.#duration.labels(name)));
      histogram.observe(durationS);
    },
    unauthorized: (route, replayed) => this.#unauthorized.labels(route, String(replayed)).inc(),
  };

  readonly tokens: TokenObserver = {
    fetched: (route: string, _token: Token, durationMs: number) => {
      this.#fetches.labels(route, 'success').inc();
      this.#refresh.labels(route).observe(durationMs / 1000);
    },
    fetchFailed: (route: string, err: TokenEndpointError, durationMs: number) => {
      this.#fetches.labels(route, err.kind).inc();
      this.#refresh.labels(route).observe(durationMs / 1000);
    },
    lookup: (route, layer, hit) => {
      // Memory hits happen on every request: one map lookup; the rarer kinds may build a key.
      const hot = layer === 'memory' && hit;
      const key = hot ? route : `${route}\0${layer}\0${hit}`;
      const children = hot ? this.#memoryHitChildren : this.#lookupChildren;
      let counter = children.get(key);
      if (!counter) children.set(key, (counter = this.#lookups.labels(route, layer, hit ? 'hit' : 'miss')));
      counter.inc();
    },
    lockWait: (route, durationMs) => this.#lockWait.labels(route).observe(durationMs / 1000),
  };

  readonly store: RedisStoreObserver = {
    error: (op) => this.#storeErrors.labels(op).inc(),
    decodeFailed: () => this.#storeErrors.labels('decode').inc(),
  };

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
