/**
 * routes.yaml text → a plain value, or problems. Aliases are measured before anything expands them: the value shares
 * an aliased node, but the schema and the secret walk visit every path through it, so a few lines of nested aliases
 * (a "billion laughs") would cost exponential time and memory there.
 */
import {
  CST,
  isAlias,
  isCollection,
  isPair,
  isScalar,
  isSeq,
  Lexer,
  LineCounter,
  parseDocument,
  visit,
  type Alias,
  type Node,
  type Pair,
} from 'yaml';

/** Expanded size allowed for any file, and per node written: alias reuse in a legitimate file is a few times its size. */
export const ALIAS_EXPANSION_BASE_NODES = 10_000;
export const ALIAS_EXPANSION_PER_NODE = 10;
/**
 * Most YAML nodes a config may have, written or once aliases are expanded: a route is about 25, so this is 2000
 * routes. It bounds what parsing and the schema hold: a 4 MiB file of nonsense (a million nodes) took 20 s and 2 GB
 * to validate, which on a reload would get the sidecar OOM-killed instead of keeping the last good config.
 */
export const MAX_YAML_NODES = 50_000;
/** Node-making tokens allowed before the document is even built (a node takes 1 to ~1.7 of them). */
const MAX_YAML_TOKENS = 2 * MAX_YAML_NODES;
const NODE_TOKENS = new Set<string | null>([
  'scalar', 'single-quoted-scalar', 'double-quoted-scalar', 'block-scalar-header', 'alias',
  'flow-map-start', 'flow-seq-start', 'seq-item-ind', 'explicit-key-ind', 'map-value-ind',
]);

export type YamlParse = { ok: true; value: unknown } | { ok: false; problems: string[] };

export function parseYaml(text: string, fileName: string): YamlParse {
  // The lexer streams; the document it would become costs ~1 KB per node, so count before building it.
  let tokens = 0;
  for (const token of new Lexer().lex(text)) {
    if (NODE_TOKENS.has(CST.tokenType(token)) && ++tokens > MAX_YAML_TOKENS) {
      return { ok: false, problems: [`${fileName}: more than ${MAX_YAML_TOKENS} YAML tokens; a config may have at most ${MAX_YAML_NODES} nodes`] };
    }
  }
  // yaml fills `linePos` only with prettyErrors; a LineCounter gives the position without the multi-line message.
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter });
  const at = (offset: number | undefined) => {
    const pos = offset === undefined ? undefined : lineCounter.linePos(offset);
    return `${fileName}${pos ? `:${pos.line}:${pos.col}` : ''}`;
  };
  if (doc.errors.length > 0) {
    return {
      ok: false,
      problems: doc.errors.map((e) => {
        const pos = e.linePos?.[0] ?? lineCounter.linePos(e.pos[0]);
        return `${fileName}${pos ? `:${pos.line}:${pos.col}` : ''}: ${e.message.split('\n')[0] ?? e.message}`;
      }),
    };
  }

  // Each alias resolves, as yaml resolves it, to the last node with its anchor before it in document order.
  const anchors = new Map<string, Node>();
  const targets = new Map<Alias, Node>();
  const problems: string[] = [];
  let nodes = 0;
  visit(doc, {
    Node: (_key, node) => {
      nodes++;
      if (isAlias(node)) {
        const target = anchors.get(node.source);
        if (target) targets.set(node, target);
        else problems.push(`${at(node.range?.[0])}: YAML alias *${node.source} has no anchor &${node.source} before it`);
      } else if (node.anchor) {
        anchors.set(node.anchor, node);
      }
    },
  });
  if (problems.length > 0) return { ok: false, problems };
  if (nodes > MAX_YAML_NODES) return { ok: false, problems: [`${fileName}: ${nodes} YAML nodes, more than the ${MAX_YAML_NODES} a config may have`] };

  const limit = Math.min(ALIAS_EXPANSION_BASE_NODES + ALIAS_EXPANSION_PER_NODE * nodes, MAX_YAML_NODES);
  const expanded = expandedSize(doc.contents, targets, limit);
  if (typeof expanded !== 'number') return { ok: false, problems: [`${at(expanded.cycle.range?.[0])}: YAML alias *${expanded.cycle.source} refers to a node that contains it (a cycle)`] };
  if (expanded > limit) {
    return { ok: false, problems: [`${fileName}: YAML aliases expand to more than ${limit} nodes (${nodes} in the file); refused as a resource exhaustion attack`] };
  }
  // Not doc.toJS(): its alias count (100 by default) refuses an ordinary file that reuses an anchor, and each alias
  // it resolves scans every anchor and alias before it (quadratic: 40 000 aliases took 14 s).
  return { ok: true, value: toPlain(doc.contents, targets) };
}

/** The node as a plain value, as toJS makes it; an alias is the very value its anchor made (shared, not copied). */
function toPlain(root: unknown, targets: ReadonlyMap<Alias, Node>): unknown {
  const anchored = new Set(targets.values());
  const made = new Map<Node, unknown>();
  const plain = (node: unknown): unknown => {
    if (isAlias(node)) {
      const target = targets.get(node);
      if (!target) throw new Error(`unresolved alias *${node.source}`);
      return made.has(target) ? made.get(target) : plain(target);
    }
    if (isScalar(node)) return remember(node, node.toJSON());
    if (isSeq(node)) {
      const out: unknown[] = remember(node, []);
      // A pair in a sequence (`[a: 1]`) is a one-key mapping.
      for (const item of node.items) out.push(isPair(item) ? addPair({}, item) : plain(item));
      return out;
    }
    if (isCollection(node)) {
      const out: Record<string, unknown> = remember(node, {});
      for (const item of node.items) if (isPair(item)) addPair(out, item);
      return out;
    }
    return node ?? null;
  };
  const remember = <T>(node: Node, value: T): T => {
    if (anchored.has(node)) made.set(node, value);
    return value;
  };
  const addPair = (out: Record<string, unknown>, pair: Pair): Record<string, unknown> => {
    const key = pair.key;
    const value = plain(pair.value);
    // `<<` is a merge key only where the schema says so (%YAML 1.1); it then resolves to this symbol.
    if (isScalar(key) && typeof key.value === 'symbol' && key.value.description === '<<') {
      for (const source of Array.isArray(value) ? value : [value]) {
        if (typeof source !== 'object' || source === null || Array.isArray(source)) throw new Error('merge sources must be maps or map aliases');
        for (const [k, v] of Object.entries(source)) if (!Object.hasOwn(out, k)) define(out, k, v);
      }
      return out;
    }
    const jsKey = plain(key);
    define(out, typeof jsKey === 'object' && jsKey !== null ? JSON.stringify(jsKey) : String(jsKey), value);
    return out;
  };
  return plain(root);
}

/** An own property even for `__proto__`: a key in the file never reaches a prototype. */
function define(out: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(out, key, { value, writable: true, enumerable: true, configurable: true });
}

/** Nodes the value has once every alias is expanded, counted up to just past `limit`; or the alias that closes a cycle. */
function expandedSize(root: unknown, targets: ReadonlyMap<Alias, Node>, limit: number): number | { cycle: Alias } {
  const sizes = new Map<Node, number>();
  const open = new Set<Node>();
  let cycle: Alias | undefined;
  const size = (node: unknown): number => {
    if (cycle) return 0;
    if (isPair(node)) return Math.min(limit + 1, size(node.key) + size(node.value));
    if (isAlias(node)) {
      const target = targets.get(node);
      if (!target) return 1;
      if (open.has(target)) {
        cycle = node;
        return 0;
      }
      return size(target);
    }
    if (isScalar(node)) return 1;
    if (!isCollection(node)) return 0;
    const known = sizes.get(node);
    if (known !== undefined) return known;
    open.add(node);
    let total = 1;
    for (const item of node.items) {
      total += size(item);
      // Saturate: past the limit the exact count does not matter, and it could grow past any number.
      if (total > limit) break;
    }
    open.delete(node);
    const result = Math.min(total, limit + 1);
    sizes.set(node, result);
    return result;
  };
  const total = size(root);
  return cycle ? { cycle } : total;
}
