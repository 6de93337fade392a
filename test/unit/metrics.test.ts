import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/admin/metrics.js';

const source = { expiries: () => new Map<string, number>(), storeUp: () => true };

function sample(text: string, name: string, labels: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('Metrics counted on the hot path, rendered at scrape time', () => {
  it('renders cumulative duration buckets, sum and count per route, and request counts by status', async () => {
    const m = new Metrics(source, { defaultMetrics: false });
    for (const [route, status, s] of [['pix', 200, 0.0004], ['pix', 200, 0.003], ['pix', 502, 40], [undefined, 404, 0.0001]] as const) m.requests.completed?.(route, status, s);
    const text = (await m.render()).body;
    const d = 'token_sidecar_request_duration_seconds';
    expect(text).toContain(`# TYPE ${d} histogram`);
    expect(sample(text, `${d}_bucket`, 'le="0.0005",route="pix"')).toBe(1);
    expect(sample(text, `${d}_bucket`, 'le="0.0025",route="pix"')).toBe(1);
    expect(sample(text, `${d}_bucket`, 'le="0.005",route="pix"')).toBe(2);
    expect(sample(text, `${d}_bucket`, 'le="30",route="pix"')).toBe(2);
    expect(sample(text, `${d}_bucket`, 'le="+Inf",route="pix"')).toBe(3);
    expect(sample(text, `${d}_sum`, 'route="pix"')).toBeCloseTo(40.0034, 6);
    expect(sample(text, `${d}_count`, 'route="pix"')).toBe(3);
    expect(sample(text, `${d}_count`, 'route="none"')).toBe(1);
    expect(sample(text, 'token_sidecar_requests_total', 'route="pix",code="200"')).toBe(2);
    expect(sample(text, 'token_sidecar_requests_total', 'route="pix",code="502"')).toBe(1);
    expect(sample(text, 'token_sidecar_requests_total', 'route="none",code="404"')).toBe(1);
  });

  it('counts cache lookups by layer and result, and a second scrape reports totals, not deltas', async () => {
    const m = new Metrics(source, { defaultMetrics: false });
    m.tokens.lookup?.('pix', 'memory', true);
    m.tokens.lookup?.('pix', 'memory', true);
    m.tokens.lookup?.('pix', 'store', false);
    await m.render();
    m.tokens.lookup?.('pix', 'memory', true);
    const text = (await m.render()).body;
    const l = 'token_sidecar_token_cache_lookups_total';
    expect(sample(text, l, 'route="pix",layer="memory",result="hit"')).toBe(3);
    expect(sample(text, l, 'route="pix",layer="store",result="miss"')).toBe(1);
  });
});
