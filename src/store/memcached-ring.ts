/**
 * Consistent hashing over memcached servers, as libmemcached's ketama does it: 160 points per server on a 32-bit
 * circle, four from each MD5 of "host:port-i"; a key belongs to the first point at or after the MD5 of the key. Adding
 * or removing a server moves about 1/n of the keys, and the order of the server list does not matter.
 */
import { createHash } from 'node:crypto';

const POINTS_PER_SERVER = 160;

function md5(text: string): Buffer {
  return createHash('md5').update(text).digest();
}

export class HashRing<T> {
  readonly #points: Uint32Array;
  readonly #nodes: T[];

  constructor(servers: readonly { name: string; node: T }[]) {
    if (servers.length === 0) throw new Error('a hash ring needs at least one server');
    const points: { at: number; node: T }[] = [];
    for (const { name, node } of servers) {
      for (let i = 0; i < POINTS_PER_SERVER / 4; i++) {
        const digest = md5(`${name}-${i}`);
        for (let h = 0; h < 4; h++) points.push({ at: digest.readUInt32LE(h * 4), node });
      }
    }
    points.sort((a, b) => a.at - b.at);
    this.#points = Uint32Array.from(points.map((p) => p.at));
    this.#nodes = points.map((p) => p.node);
  }

  pick(key: string): T {
    const at = md5(key).readUInt32LE(0);
    // The first point at or after `at`, wrapping around to the first one.
    let lo = 0;
    let hi = this.#points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.#points[mid] ?? 0) < at) lo = mid + 1;
      else hi = mid;
    }
    const node = this.#nodes[lo === this.#points.length ? 0 : lo];
    if (node === undefined) throw new Error('empty hash ring');
    return node;
  }
}
