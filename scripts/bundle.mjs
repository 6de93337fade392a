// The shipped artifact: dist/token-sidecar.mjs, one ESM file with our code and most dependencies (undici, ioredis,
// zod, yaml, prom-client), built from tsc's dist/. Node 20 has no compile cache, and loading ~440 files from
// node_modules was most of the start-up time: bundled, process start to ready measured ~28 % shorter (362 → 261 ms,
// docs/kubernetes.md). pino stays outside: its transports (pino-pretty on a terminal) run in worker threads that load
// files from pino's own folder, so it is resolved from node_modules as usual.
import { rmSync } from 'node:fs';
import { build } from 'esbuild';
import { bundleTrims } from './bundle-trims.mjs';

// Chunk names carry a content hash: without this, every build leaves the last one's chunks behind in the image.
rmSync('dist/chunks', { recursive: true, force: true });

await build({
  entryPoints: { 'token-sidecar': 'dist/cli/main.js' },
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  // What is imported lazily (the Redis store and ioredis, the webhook, the demo) goes into chunks of its own, loaded
  // only when used: one bundle of everything held ~15 MB more RSS at idle than the unbundled program.
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  // Whitespace and syntax only: names stay, so stack traces still read.
  minifyWhitespace: true,
  minifySyntax: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['pino', 'pino-pretty'],
  // CommonJS dependencies call require() for Node's built-ins; an ES module has no require of its own.
  banner: { js: "import { createRequire as __tsCreateRequire } from 'node:module'; const require = __tsCreateRequire(import.meta.url);" },
  legalComments: 'none',
  plugins: process.env.NO_TRIMS ? [] : [bundleTrims()],
  logLevel: 'warning',
});
