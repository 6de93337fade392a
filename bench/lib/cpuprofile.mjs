// Summarize a V8 .cpuprofile (node --cpu-prof): self time by function and by area, as % of busy samples.
const AREAS = [
  [/\(garbage collector\)/, 'GC'],
  [/\(program\)/, 'V8/native (program)'],
  [/node_modules\/undici\//, 'undici'],
  [/node_modules\/(pino|sonic-boom|thread-stream|fast-redact|quick-format-unescaped|on-exit-leak-free|atomic-sleep|safe-stable-stringify)/, 'logging (pino)'],
  [/node_modules\/ioredis\//, 'ioredis'],
  [/node_modules\//, 'other dependencies'],
  [/\/dist\/proxy\//, 'token-sidecar proxy/'],
  [/\/dist\/tokens\//, 'token-sidecar tokens/'],
  [/\/dist\//, 'token-sidecar other'],
  [/^node:internal\/(http|_http|streams\/|stream)|^node:_http|^node:http/, 'node http + streams'],
  [/^node:internal\/(net|stream_base|dgram)|^node:net/, 'node net'],
  [/^node:/, 'node other'],
];

export function summarizeProfile(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const hits = new Map();
  // samples + timeDeltas give time per sample; fall back to hitCount.
  if (profile.samples?.length && profile.timeDeltas?.length) {
    for (let i = 0; i < profile.samples.length; i++) {
      const dt = profile.timeDeltas[i + 1] ?? 0;
      hits.set(profile.samples[i], (hits.get(profile.samples[i]) ?? 0) + Math.max(0, dt));
    }
  } else for (const n of profile.nodes) hits.set(n.id, n.hitCount ?? 0);
  const fn = new Map();
  const areas = new Map();
  let busy = 0;
  for (const [id, t] of hits) {
    const n = byId.get(id);
    if (!n) continue;
    const cf = n.callFrame;
    if (cf.functionName === '(idle)') continue;
    busy += t;
    const url = cf.url.replace(/^file:\/\//, '');
    const short = url.replace(/^.*node_modules\//, '').replace(/^.*\/dist\//, 'dist/');
    const key = `${cf.functionName || '(anonymous)'}\u0000${short}:${cf.lineNumber + 1}`;
    fn.set(key, (fn.get(key) ?? 0) + t);
    const area = AREAS.find(([re]) => re.test(url) || re.test(cf.functionName))?.[1] ?? (url ? 'other JS' : 'native/builtins');
    areas.set(area, (areas.get(area) ?? 0) + t);
  }
  const top = [...fn.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 40)
    .map(([k, t]) => {
      const [name, where] = k.split('\u0000');
      return { name, where, pct: (100 * t) / busy };
    });
  return {
    busyMs: busy / 1000,
    top,
    areas: [...areas.entries()].sort((a, b) => b[1] - a[1]).map(([area, t]) => ({ area, pct: (100 * t) / busy })),
  };
}
