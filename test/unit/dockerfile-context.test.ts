/**
 * The image's build context is an allow-list (.dockerignore); a file the Dockerfile copies but the list leaves out
 * breaks every image build (it did, for scripts/bundle-trims.mjs). No container engine runs in CI, so this checks the
 * two files against each other, with the same pattern rules the builder applies: later lines win, `!` re-includes.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..', '..');
const read = (f: string) => readFileSync(join(root, f), 'utf8');

/** `COPY` sources from the build context (not `--from=` another stage), as written in the Dockerfile. */
function copySources(dockerfile: string): string[] {
  return dockerfile
    .split('\n')
    .filter((l) => /^COPY\s/.test(l) && !/--from=/.test(l))
    .flatMap((l) => l.replace(/^COPY\s+/, '').split(/\s+/).filter((w) => w && !w.startsWith('--')).slice(0, -1));
}

const globToRegExp = (pattern: string) =>
  new RegExp(`^${pattern.replace(/\/$/, '').replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}(/.*)?$`);

/** Whether the context keeps `path`: the last matching line decides (`!` keeps, a plain pattern drops). */
function inContext(path: string, dockerignore: string): boolean {
  let kept = true;
  for (const raw of dockerignore.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const keep = line.startsWith('!');
    if (globToRegExp(keep ? line.slice(1) : line).test(path)) kept = keep;
  }
  return kept;
}

describe('the image build context', () => {
  const sources = copySources(read('Dockerfile'));
  const ignore = read('.dockerignore');

  it('the rules behave as the builder applies them', () => {
    expect(inContext('scripts/bundle.mjs', '*\n!scripts/bundle.mjs')).toBe(true);
    expect(inContext('scripts/other.mjs', '*\n!scripts/bundle.mjs')).toBe(false);
    expect(inContext('src/proxy/forward.ts', '*\n!src/')).toBe(true);
    expect(inContext('routes.yaml', '*\n!src/')).toBe(false);
  });

  it('every file the Dockerfile copies exists and is on the .dockerignore allow-list', () => {
    expect(sources).toContain('src');
    for (const source of sources) {
      const path = source.replace(/^\.\//, '').replace(/\/$/, '');
      expect(existsSync(join(root, path)), `${path} exists`).toBe(true);
      const probe = statSync(join(root, path)).isDirectory() ? `${path}/x` : path;
      expect(inContext(probe, ignore), `${path} is in the build context`).toBe(true);
    }
  });
});
