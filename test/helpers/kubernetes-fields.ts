/**
 * Unknown-field check for Kubernetes objects. kubernetes-models' `validate()` checks types and formats against the
 * OpenAPI schemas but lets unknown fields through, so a typo (`readinesProbe`) would pass it and then be dropped, or
 * refused, by a real API server (kubectl's default strict field validation). This walks the same models' TypeScript
 * declarations (`node_modules/kubernetes-models/**\/*.d.ts`): each interface's quoted property names are the fields
 * Kubernetes knows, and each property's declared type leads to the next interface.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const modelsRoot = join(repoRoot, 'node_modules/kubernetes-models');

interface FieldType {
  /** The .d.ts file of the property's interface type, when it is one. */
  file?: string;
}

const cache = new Map<string, Map<string, FieldType>>();

function resolveImport(fromFile: string, spec: string): string | undefined {
  const candidates = spec.startsWith('.')
    ? [join(dirname(fromFile), `${spec}.d.ts`)]
    : [join(repoRoot, 'node_modules', `${spec}.d.ts`), join(modelsRoot, 'node_modules', `${spec}.d.ts`)];
  return candidates.find((c) => existsSync(c));
}

/** The first `export interface` of a model's .d.ts: property name -> where its type is declared. */
function fieldsOf(file: string): Map<string, FieldType> {
  const cached = cache.get(file);
  if (cached) return cached;
  const text = readFileSync(file, 'utf8');
  const imports = new Map<string, string>();
  for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) {
    const target = m[1] && m[2] ? resolveImport(file, m[2]) : undefined;
    if (m[1] && target) imports.set(m[1], target);
  }
  const fields = new Map<string, FieldType>();
  const body = /^export interface \w+(?: extends [\w, ]+)? \{\n([\s\S]*?)^\}/m.exec(text)?.[1] ?? '';
  for (const m of body.matchAll(/^ {4}"([^"]+)"\??: (.+?);?$/gm)) {
    const name = m[1];
    const type = m[2] ?? '';
    if (!name) continue;
    const alias = /^(?:Array<)?(\w+)>?$/.exec(type)?.[1];
    const target = alias ? imports.get(alias) : undefined;
    fields.set(name, target ? { file: target } : {});
  }
  cache.set(file, fields);
  return fields;
}

/** `apps/v1` + `Deployment` -> node_modules/kubernetes-models/apps/v1/Deployment.d.ts (core group: `v1/`). */
export function modelFile(apiVersion: string, kind: string): string | undefined {
  const file = join(modelsRoot, apiVersion, `${kind}.d.ts`);
  return existsSync(file) ? file : undefined;
}

/** Every field path in `value` that its Kubernetes type does not declare. */
export function unknownFields(value: unknown, file: string, path = ''): string[] {
  if (Array.isArray(value)) return value.flatMap((item, i) => unknownFields(item, file, `${path}[${i}]`));
  if (typeof value !== 'object' || value === null) return [];
  const fields = fieldsOf(file);
  if (fields.size === 0) return []; // a map type (labels, data, ...): any key is fine
  const problems: string[] = [];
  for (const [key, child] of Object.entries(value)) {
    const field = fields.get(key);
    const childPath = path ? `${path}.${key}` : key;
    if (!field) problems.push(childPath);
    else if (field.file) problems.push(...unknownFields(child, field.file, childPath));
  }
  return problems;
}

/** Unknown fields of a whole object, found by its apiVersion and kind; undefined when the kind has no model. */
export function unknownFieldsOfObject(doc: { apiVersion?: unknown; kind?: unknown }): string[] | undefined {
  if (typeof doc.apiVersion !== 'string' || typeof doc.kind !== 'string') return undefined;
  const file = modelFile(doc.apiVersion, doc.kind);
  return file ? unknownFields(doc, file) : undefined;
}
