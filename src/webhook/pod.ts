/**
 * The pod side of injection: the parts of a Pod the webhook reads, and what its `token-sidecar.io/*` annotations ask
 * for once validated. Pure: no I/O.
 */
import { z } from 'zod';
import {
  ANNOTATIONS,
  DEFAULT_REDIS_SECRET_KEY,
  IMAGE_REF_RE,
  ROUTES_FILE_NAME,
  parseQuantity,
  type InjectSettings,
} from './settings.js';

// The parts of a Pod the webhook reads. Loose objects: every other field passes through untouched. `nullish` because
// the API server's JSON may carry explicit nulls for empty fields.
const portSchema = z.looseObject({ name: z.string().nullish(), containerPort: z.number().nullish() });
const containerSchema = z.looseObject({ name: z.string(), ports: z.array(portSchema).nullish() });
const podSchema = z.looseObject({
  metadata: z
    .looseObject({
      name: z.string().nullish(),
      generateName: z.string().nullish(),
      annotations: z.record(z.string(), z.string()).nullish(),
    })
    .nullish(),
  spec: z.looseObject({
    containers: z.array(containerSchema).min(1),
    initContainers: z.array(containerSchema).nullish(),
    volumes: z.array(z.looseObject({ name: z.string() })).nullish(),
    hostNetwork: z.boolean().nullish(),
    terminationGracePeriodSeconds: z.number().nullish(),
  }),
});
export type ParsedPod = z.infer<typeof podSchema>;
export type ParsedContainer = z.infer<typeof containerSchema>;

/** `value` as a Pod, or why it is not one (the first problem, with where it is). */
export function parsePod(value: unknown): { ok: true; pod: ParsedPod } | { ok: false; why: string } {
  const parsed = podSchema.safeParse(value);
  if (parsed.success) return { ok: true, pod: parsed.data };
  const issue = parsed.error.issues[0];
  const where = issue && issue.path.length > 0 ? ` at ${issue.path.join('.')}` : '';
  return { ok: false, why: `the object is not a Pod this webhook can read${where}: ${issue?.message ?? 'invalid'}` };
}

/** RFC 1123 subdomain: what Kubernetes requires of ConfigMap and Secret names. */
const DNS1123_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
function isObjectName(name: string): boolean {
  return name.length <= 253 && DNS1123_SUBDOMAIN_RE.test(name);
}
/** A Secret data key: `[-._a-zA-Z0-9]+`. */
const SECRET_KEY_RE = /^[-._a-zA-Z0-9]{1,253}$/;

/** What the annotations ask for, after validation. */
export interface PodRequest {
  routesConfigMap: string;
  secrets: string[];
  redisSecret?: { name: string; key: string };
  native: boolean;
  image: string;
  resources: { requests: Record<string, string>; limits: Record<string, string> };
}

/**
 * Validate every annotation; collect all problems (not just the first) so one round trip fixes them all.
 * Undefined when there is any problem.
 */
export function readPodRequest(
  annotations: Record<string, string>,
  settings: InjectSettings,
  problems: string[],
  warnings: string[],
): PodRequest | undefined {
  const routes = annotations[ANNOTATIONS.routes]?.trim();
  if (routes === undefined || routes === '') {
    problems.push(`annotation ${ANNOTATIONS.routes} is required: the name of the ConfigMap holding ${ROUTES_FILE_NAME}`);
  } else if (!isObjectName(routes)) {
    problems.push(`${ANNOTATIONS.routes}: ${JSON.stringify(routes)} is not a valid ConfigMap name`);
  }

  const secrets: string[] = [];
  for (const raw of (annotations[ANNOTATIONS.secrets] ?? '').split(',')) {
    const name = raw.trim();
    if (name === '') continue;
    if (!isObjectName(name)) {
      problems.push(`${ANNOTATIONS.secrets}: ${JSON.stringify(name)} is not a valid Secret name`);
    } else if (secrets.includes(name)) {
      warnings.push(`token-sidecar: Secret ${name} is listed twice in ${ANNOTATIONS.secrets}`);
    } else {
      secrets.push(name);
    }
  }

  let redisSecret: PodRequest['redisSecret'];
  const redisRaw = annotations[ANNOTATIONS.redisSecret]?.trim();
  if (redisRaw !== undefined && redisRaw !== '') {
    // `<secret>` or `<secret>:<key>`; `:` cannot occur in a Secret name, so the split is unambiguous.
    const [name = '', key = DEFAULT_REDIS_SECRET_KEY, ...rest] = redisRaw.split(':');
    if (rest.length > 0 || !isObjectName(name) || !SECRET_KEY_RE.test(key)) {
      problems.push(`${ANNOTATIONS.redisSecret}: ${JSON.stringify(redisRaw)} is not "<secret>" or "<secret>:<key>"`);
    } else {
      redisSecret = { name, key };
    }
  }

  let native = settings.nativeSidecar;
  const nativeRaw = annotations[ANNOTATIONS.nativeSidecar];
  if (nativeRaw === 'true' || nativeRaw === 'false') native = nativeRaw === 'true';
  else if (nativeRaw !== undefined) {
    problems.push(`${ANNOTATIONS.nativeSidecar} must be "true" or "false", got ${JSON.stringify(nativeRaw)}`);
  }

  let image = settings.image;
  const imageRaw = annotations[ANNOTATIONS.image];
  if (imageRaw !== undefined) {
    if (!settings.allowImageOverride) {
      warnings.push(`token-sidecar: ${ANNOTATIONS.image} ignored, this webhook does not allow image overrides`);
    } else if (!IMAGE_REF_RE.test(imageRaw)) {
      problems.push(`${ANNOTATIONS.image}: ${JSON.stringify(imageRaw)} is not an image reference`);
    } else {
      image = imageRaw;
    }
  }

  const resources = readResources(annotations, settings, problems);
  if (problems.length > 0 || routes === undefined) return undefined;
  return {
    routesConfigMap: routes,
    secrets,
    ...(redisSecret ? { redisSecret } : {}),
    native,
    image,
    resources,
  };
}

function readResources(
  annotations: Record<string, string>,
  settings: InjectSettings,
  problems: string[],
): PodRequest['resources'] {
  const pick = (annotation: string, fallback: string | undefined): string | undefined => {
    const raw = annotations[annotation];
    if (raw === undefined) return fallback;
    const value = raw.trim();
    if (parseQuantity(value) === undefined) {
      problems.push(`${annotation}: ${JSON.stringify(raw)} is not a Kubernetes quantity (e.g. 50m, 0.5, 128Mi, 1Gi)`);
      return fallback;
    }
    return value;
  };
  const d = settings.resources;
  const cpuRequest = pick(ANNOTATIONS.cpuRequest, d.cpuRequest);
  const memoryRequest = pick(ANNOTATIONS.memoryRequest, d.memoryRequest);
  const cpuLimit = pick(ANNOTATIONS.cpuLimit, d.cpuLimit);
  const memoryLimit = pick(ANNOTATIONS.memoryLimit, d.memoryLimit);

  // The API server rejects a container whose request exceeds its limit; say so here, naming our annotations,
  // instead of letting the pod fail validation with a message about a container the user never wrote.
  const exceeds = (req: string | undefined, lim: string | undefined): boolean =>
    req !== undefined && lim !== undefined && (parseQuantity(req) ?? 0) > (parseQuantity(lim) ?? Infinity);
  if (exceeds(cpuRequest, cpuLimit)) problems.push(`cpu request ${cpuRequest} exceeds cpu limit ${cpuLimit}`);
  if (exceeds(memoryRequest, memoryLimit)) {
    problems.push(`memory request ${memoryRequest} exceeds memory limit ${memoryLimit}`);
  }

  const requests: Record<string, string> = {};
  const limits: Record<string, string> = {};
  if (cpuRequest !== undefined) requests.cpu = cpuRequest;
  if (memoryRequest !== undefined) requests.memory = memoryRequest;
  if (cpuLimit !== undefined) limits.cpu = cpuLimit;
  if (memoryLimit !== undefined) limits.memory = memoryLimit;
  return { requests, limits };
}
