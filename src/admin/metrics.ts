/**
 * Prometheus metrics (prom-client), named as in the contract. Labels are route names, status codes and small fixed
 * sets only: never a path, a token, a secret or anything else with unbounded values.
 *
 * What moves on every request (requests, their duration, memory-cache hits) is counted in plain numbers and handed to
 * prom-client when /metrics is scraped: prom-client builds a label hash and a label object on every `inc` and
 * `observe`, which a profile showed as a visible share of a forwarded request's allocations.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type HistogramConfiguration, type MetricObjectWithValues, type MetricValueWithName } from 'prom-client';
import type { RequestObserver } from '../proxy/server.js';
import type { RedisStoreObserver } from '../store/redis.js';
import type { TokenObserver } from '../tokens/manager.js';
import type { TokenEndpointError } from '../core/errors.js';
import type { Token } from '../core/token.js';

const P = 'token_sidecar_';
const NO_ROUTE = 'none';

export interface ExpirySource {
  /** Route name → token expiry in ms (only routes holding a usable token). */
  expiries(): Map<string, number>;
  storeUp(): boolean;
}

export class Metrics {
  readonly registry = new Registry();
  /** route → status → requests. */
  readonly #requestCounts = new Map<string, Map<number, number>>();
  /** `route\0layer\0result` → lookups. */
  readonly #lookupCounts = new Map<string, number>();
  readonly #duration = new RouteDurations({
    name: `${P}request_duration_seconds`,
    help: 'Time from request to the end of the answer, by route',
    labelNames: ['route'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly #fetches = new Counter({ name: `${P}token_fetches_total`, help: 'Calls to the token endpoint, by route and result (success, rejected, unavailable)', labelNames: ['route', 'result'] as const, registers: [this.registry] });
  readonly #refresh = new Histogram({ name: `${P}token_refresh_duration_seconds`, help: 'Duration of token endpoint calls', labelNames: ['route'] as const, buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [this.registry] });
  readonly #lockWait = new Histogram({ name: `${P}lock_wait_seconds`, help: "Time a pod waited for another pod's refresh", labelNames: ['route'] as const, buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15], registers: [this.registry] });
  readonly #unauthorized = new Counter({ name: `${P}upstream_unauthorized_total`, help: 'Vendor 401 answers, by whether the request was replayed', labelNames: ['route', 'replayed'] as const, registers: [this.registry] });
  readonly #fallbacks = new Counter({ name: `${P}store_fallback_fetches_total`, help: 'Token calls this pod made alone because the fleet could not coordinate them, by reason (down, timeout, error, lock_wait_timeout, foreign_key)', labelNames: ['route', 'reason'] as const, registers: [this.registry] });
  readonly #storeErrors = new Counter({ name: `${P}store_errors_total`, help: 'Failed or skipped store calls, and unreadable values, by operation', labelNames: ['op'] as const, registers: [this.registry] });

  constructor(source: ExpirySource, opts: { defaultMetrics?: boolean } = {}) {
    const requestCounts = this.#requestCounts;
    new Counter({
      name: `${P}requests_total`,
      help: 'Requests handled, by route and HTTP status',
      labelNames: ['route', 'code'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [route, byStatus] of requestCounts) for (const [code, n] of byStatus) this.inc({ route, code: String(code) }, n);
      },
    });
    const lookupCounts = this.#lookupCounts;
    new Counter({
      name: `${P}token_cache_lookups_total`,
      help: 'Token cache lookups by layer (memory, store) and result (hit, miss)',
      labelNames: ['route', 'layer', 'result'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [key, n] of lookupCounts) {
          const [route = '', layer = '', result = ''] = key.split('\0');
          this.inc({ route, layer, result }, n);
        }
      },
    });
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
      let byStatus = this.#requestCounts.get(name);
      if (!byStatus) this.#requestCounts.set(name, (byStatus = new Map()));
      byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
      this.#duration.record(name, durationS);
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
      // Memory hits happen on every request: their key is cached per route, the rarer kinds build theirs.
      const key = layer === 'memory' && hit ? this.#memoryHitKey(route) : `${route}\0${layer}\0${hit ? 'hit' : 'miss'}`;
      this.#lookupCounts.set(key, (this.#lookupCounts.get(key) ?? 0) + 1);
    },
    lockWait: (route, durationMs) => this.#lockWait.labels(route).observe(durationMs / 1000),
    fallback: (route, reason) => this.#fallbacks.labels(route, reason).inc(),
  };

  readonly store: RedisStoreObserver = {
    error: (op) => this.#storeErrors.labels(op).inc(),
    decodeFailed: () => this.#storeErrors.labels('decode').inc(),
  };

  readonly #memoryHitKeys = new Map<string, string>();
  #memoryHitKey(route: string): string {
    let key = this.#memoryHitKeys.get(route);
    if (key === undefined) this.#memoryHitKeys.set(route, (key = `${route}\0memory\0hit`));
    return key;
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/**
 * A histogram by route whose observations are plain array increments; prom-client only formats it (its own
 * `observe` builds a label object and hash per call).
 */
class RouteDurations extends Histogram<string> {
  readonly #name: string;
  readonly #help: string;
  readonly #bounds: readonly number[];
  readonly #byRoute = new Map<string, { counts: number[]; sum: number; count: number }>();

  constructor(config: HistogramConfiguration<string> & { buckets: number[] }) {
    super(config);
    this.#name = config.name;
    this.#help = config.help;
    this.#bounds = config.buckets;
  }

  record(route: string, valueS: number): void {
    let h = this.#byRoute.get(route);
    if (!h) this.#byRoute.set(route, (h = { counts: this.#bounds.map(() => 0), sum: 0, count: 0 }));
    const bounds = this.#bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (valueS <= (bounds[i] as number)) {
        h.counts[i] = (h.counts[i] as number) + 1;
        break;
      }
    }
    h.sum += valueS;
    h.count++;
  }

  override get(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
    const values: MetricValueWithName<string>[] = [];
    const name = this.#name;
    for (const [route, h] of this.#byRoute) {
      let cumulative = 0;
      this.#bounds.forEach((le, i) => {
        cumulative += h.counts[i] ?? 0;
        values.push({ metricName: `${name}_bucket`, labels: { le, route }, value: cumulative });
      });
      values.push({ metricName: `${name}_bucket`, labels: { le: '+Inf', route }, value: h.count });
      values.push({ metricName: `${name}_sum`, labels: { route }, value: h.sum });
      values.push({ metricName: `${name}_count`, labels: { route }, value: h.count });
    }
    // prom-client's typings declare `type` as a numeric enum; its code (and the text format) uses the string.
    const metric = { name, help: this.#help, type: 'histogram', aggregator: 'sum', collect: () => undefined, values };
    return Promise.resolve(metric as unknown as MetricObjectWithValues<MetricValueWithName<string>>);
  }

  /** What the registry calls when it renders the text format. */
  getForPromString(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
    return this.get();
  }

  override reset(): void {
    // prom-client's constructor calls reset() before this class's fields exist.
    if (#byRoute in this) this.#byRoute.clear();
    super.reset();
  }
}
