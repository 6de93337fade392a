// Peers measured beside the product (devDependencies): http-proxy, http-proxy-3. Resolved from the project's
// node_modules, else from $BENCH_DEPS (a folder with its own node_modules, e.g. after
// `npm install --no-save http-proxy@1 http-proxy-3@1` there), so the bench runs before they are added.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

function requirers() {
  const out = [createRequire(join(here, '..', '..', 'package.json'))];
  if (process.env.BENCH_DEPS) out.push(createRequire(join(process.env.BENCH_DEPS, 'package.json')));
  return out;
}

/** { path, version } of a peer package, or undefined when it is not installed. */
export function findPeer(name) {
  for (const r of requirers()) {
    try {
      const main = r.resolve(name);
      const pkgPath = r.resolve(`${name}/package.json`);
      return { path: main, version: JSON.parse(readFileSync(pkgPath, 'utf8')).version };
    } catch {
      try {
        // Packages whose exports hide package.json: walk up from main.
        const main = r.resolve(name);
        let d = dirname(main);
        for (let i = 0; i < 5; i++, d = dirname(d)) {
          try {
            const pkg = JSON.parse(readFileSync(join(d, 'package.json'), 'utf8'));
            if (pkg.name === name) return { path: main, version: pkg.version };
          } catch {
            /* keep walking */
          }
        }
      } catch {
        /* not here */
      }
    }
  }
  return undefined;
}

export async function loadPeer(name) {
  const found = findPeer(name);
  if (!found) throw new Error(`${name} is not installed (add it as a devDependency, or set BENCH_DEPS)`);
  return createRequire(found.path)(found.path);
}
