// What the bundle leaves out or loads late, as an esbuild plugin. Every trim keeps behaviour; the figures are in
// bench/README.md ("Idle memory, session 8") and test/integration/bundle-trims.test.ts proves what must stay.
// `NO_TRIMS=1 node scripts/bundle.mjs` builds without them, for an A/B.
import { constants as http2Constants } from 'node:http2';

/** node:http2 for undici's client-h2.js: Node's http2 binding (nghttp2 and its buffers) costs ~2.8 MB resident the
 * moment it is required, and undici requires it at load only to read protocol constants (RFC 9113 header names and
 * error codes, the same in every Node). The constants are copied at build time; anything else (`connect`) loads the
 * real module on first use, i.e. only when a route has `http2: true | auto`. */
const http2Shim = `
const constants = ${JSON.stringify(http2Constants)};
let real;
module.exports = new Proxy({ constants }, {
  get: (target, key) => (key === 'constants' ? constants : (real ??= require('node:http2'))[key]),
});
`;

/** zod's 48 translations of its error messages (~290 KB of the bundle's source, kept on the heap as source text for
 * the process's life): config errors are reported in English only, which zod's own schemas.js loads by itself. */
const zodLocales = `export { default as en } from '../locales/en.js';`;

/** prom-client: the cluster aggregator and the Pushgateway (which requires node:https, zlib and url at load) are never
 * used here; the rest of prom-client is untouched. (node:cluster itself is loaded anyway, by net.Server.listen.) */
const unused = (what) => `module.exports = function unused() { throw new Error('${what} is not in the token-sidecar bundle'); };`;

const TRIMS = [
  { importer: /undici[\\/]lib[\\/]dispatcher[\\/]client-h2\.js$/, path: /^node:http2$/, contents: http2Shim },
  { importer: /zod[\\/]v4[\\/](classic|core)[\\/][^\\/]+\.js$/, path: /^\.\.\/locales\/index\.js$/, contents: zodLocales },
  { importer: /prom-client[\\/]index\.js$/, path: /^\.\/lib\/cluster$/, contents: unused('prom-client AggregatorRegistry') },
  { importer: /prom-client[\\/]index\.js$/, path: /^\.\/lib\/pushgateway$/, contents: unused('prom-client Pushgateway') },
];

/** The esbuild plugin; `applied` records the trims that matched, so the build fails when a dependency moved and one
 * no longer matches (a silent no-op would bring the memory back). */
export function bundleTrims() {
  const applied = new Set();
  return {
    name: 'token-sidecar-trims',
    setup(build) {
      build.onResolve({ filter: /.*/ }, (args) => {
        const i = TRIMS.findIndex((t) => t.path.test(args.path) && t.importer.test(args.importer));
        if (i < 0) return undefined;
        applied.add(i);
        return { path: `trim-${i}`, namespace: 'token-sidecar-trim', pluginData: { resolveDir: args.resolveDir } };
      });
      build.onLoad({ filter: /.*/, namespace: 'token-sidecar-trim' }, (args) => {
        const t = TRIMS[Number(args.path.slice('trim-'.length))];
        return { contents: t.contents, loader: 'js', resolveDir: args.pluginData.resolveDir };
      });
      build.onEnd((result) => {
        if (result.errors.length) return;
        const missing = TRIMS.filter((_, i) => !applied.has(i));
        if (missing.length) {
          return { errors: missing.map((t) => ({ text: `bundle trim no longer matches: ${t.path} from ${t.importer} (did a dependency change?)` })) };
        }
        return undefined;
      });
    },
  };
}
