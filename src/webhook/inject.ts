/**
 * The pure half of the admission webhook: Pod (as the API server sent it) -> RFC 6902 JSON Patch that adds the
 * token-sidecar. No I/O, no clock, no randomness: the same input always yields the same patch, which is what makes
 * reinvocation safe and the golden tests meaningful. The HTTPS envelope lives in server.ts.
 *
 * Kubernetes behaviour this relies on, with where it comes from:
 * - Native sidecars (KEP-753, https://kubernetes.io/docs/concepts/workloads/pods/sidecar-containers/): an init
 *   container with `restartPolicy: Always` is started in init order and, once its startupProbe passes, the next init
 *   container (and eventually the app) starts; it keeps running for the pod's life and is stopped only after the app
 *   containers have exited. Beta and on by default since 1.29, GA in 1.33.
 * - Before 1.29 the API server drops the unknown `restartPolicy` field, leaving an init container that never exits
 *   and a pod stuck in `Init:0/1`: hence the `token-sidecar.io/native-sidecar: "false"` fallback (a regular container).
 * - Secret and ConfigMap volumes are updated in place through an atomic `..data` symlink swap, but a `subPath` mount
 *   pins the old file forever (https://kubernetes.io/docs/concepts/configuration/secret/#using-secrets-as-files-from-a-pod):
 *   so whole volumes are mounted, never subPath, and the sidecar's file watcher sees rotations.
 * - Mutating webhooks may be called again for the same object (reinvocationPolicy, and plain retries), so the patch
 *   must be idempotent (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#idempotence).
 */
import { z } from 'zod';

/** The annotations this webhook reads and writes. All are documented in docs/kubernetes.md. */
export const ANNOTATIONS = {
  inject: 'token-sidecar.io/inject',
  routes: 'token-sidecar.io/routes',
  secrets: 'token-sidecar.io/secrets',
  redisSecret: 'token-sidecar.io/redis-secret',
  nativeSidecar: 'token-sidecar.io/native-sidecar',
  cpuRequest: 'token-sidecar.io/cpu-request',
  memoryRequest: 'token-sidecar.io/memory-request',
  cpuLimit: 'token-sidecar.io/cpu-limit',
  memoryLimit: 'token-sidecar.io/memory-limit',
  image: 'token-sidecar.io/image',
  injected: 'token-sidecar.io/injected',
} as const;

/** kubectl logs/exec pick this container when no -c is given (kubectl >= 1.21). */
const DEFAULT_CONTAINER_ANNOTATION = 'kubectl.kubernetes.io/default-container';

export const SIDECAR_CONTAINER_NAME = 'token-sidecar';
export const ROUTES_VOLUME_NAME = 'token-sidecar-routes';
export const SECRET_VOLUME_PREFIX = 'token-sidecar-secret-';
/** From the sidecar contract (routes.yaml `listen` / `admin`). */
export const PROXY_PORT = 15080;
export const ADMIN_PORT = 15081;
export const ROUTES_FILE_NAME = 'routes.yaml';
/** Secret key read for REDIS_PASSWORD when `token-sidecar.io/redis-secret` names no key. */
export const DEFAULT_REDIS_SECRET_KEY = 'password';

/**
 * A Kubernetes resource quantity, as the API server accepts it for CPU and memory, minus the rarely used forms
 * (leading `+`, trailing `.`). https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/
 */
const QUANTITY_RE = /^(\d+(?:\.\d+)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$/;
const SUFFIX_FACTOR: Readonly<Record<string, number>> = {
  '': 1,
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** The quantity's value in base units (cores, bytes), or undefined when it is not a valid quantity. */
export function parseQuantity(text: string): number | undefined {
  const m = QUANTITY_RE.exec(text);
  if (!m) return undefined;
  const [, digits = '', suffix = ''] = m;
  const factor = /^[eE]/.test(suffix) ? 10 ** Number(suffix.slice(1)) : SUFFIX_FACTOR[suffix];
  if (factor === undefined) return undefined;
  const value = Number(digits) * factor;
  return Number.isFinite(value) ? value : undefined;
}

const quantitySchema = z.string().refine((s) => parseQuantity(s) !== undefined, {
  message: 'not a Kubernetes quantity (e.g. 50m, 0.5, 128Mi, 1Gi)',
});
const absolutePathSchema = z.string().regex(/^\/[^\0]*[^/]$/, 'an absolute path without a trailing slash');

/** RFC 1123 subdomain: what Kubernetes requires of ConfigMap and Secret names. */
const DNS1123_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
function isObjectName(name: string): boolean {
  return name.length <= 253 && DNS1123_SUBDOMAIN_RE.test(name);
}
/** A Secret data key: `[-._a-zA-Z0-9]+`. */
const SECRET_KEY_RE = /^[-._a-zA-Z0-9]{1,253}$/;

/**
 * Cluster-wide injection settings: the webhook's flags, parsed once with {@link parseInjectSettings}.
 * Every field but `image` has a default that matches the sidecar contract.
 */
export const injectSettingsSchema = z
  .object({
    /** The sidecar image, e.g. `registry.example/token-sidecar:0.1.0` (pin by digest in production). */
    image: z.string().regex(/^[^\s]+$/, 'an image reference without spaces'),
    imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).default('IfNotPresent'),
    /** Inject as a native sidecar (KEP-753) unless a pod says `token-sidecar.io/native-sidecar: "false"`. */
    nativeSidecar: z.boolean().default(true),
    /**
     * Honour `token-sidecar.io/image`. Off by default: the sidecar holds the pod's vendor credentials, and a platform
     * that vets the sidecar image (signatures, scanning) should not let every pod author swap it.
     */
    allowImageOverride: z.boolean().default(false),
    /**
     * Modest defaults: a bare Node process idles at ~66 MB RSS and peaked at 85–105 MB under load with
     * --max-semi-space-size=2 (shared/notes/performance.md). No CPU limit by default: CFS throttling adds latency
     * to every proxied request, and the request already reserves the sidecar's share.
     */
    resources: z
      .object({
        cpuRequest: quantitySchema.default('50m'),
        memoryRequest: quantitySchema.default('96Mi'),
        cpuLimit: quantitySchema.optional(),
        memoryLimit: quantitySchema.default('256Mi'),
      })
      .strict()
      .prefault({}),
    /** Where the routes ConfigMap is mounted (whole volume); the sidecar reads `<routesMountPath>/routes.yaml`. */
    routesMountPath: absolutePathSchema.default('/etc/token-sidecar'),
    /** Each Secret in `token-sidecar.io/secrets` is mounted at `<secretsMountRoot>/<secret-name>/`. */
    secretsMountRoot: absolutePathSchema.default('/var/run/secrets/token-sidecar'),
    /** Never injected, whatever the pod says. */
    excludedNamespaces: z.array(z.string()).default(['kube-system', 'kube-public', 'kube-node-lease']),
    /**
     * The longest `drainTimeout` the routes.yaml files in use set (the sidecar's default is 10 s): the pod's
     * terminationGracePeriodSeconds is raised to fit it. The sidecar itself reads its drain bound from routes.yaml.
     */
    drainTimeoutSeconds: z.number().int().min(1).max(600).default(10),
    /**
     * Regular-container fallback only: how long the sidecar's preStop hook holds SIGTERM back, so the app (which is
     * signalled at the same moment) can finish its own shutdown while the proxy still serves it.
     */
    fallbackPreStopSeconds: z.number().int().min(0).max(60).default(5),
    runAsUser: z.number().int().min(1).default(10001),
  })
  .strict()
  .refine((s) => !`${s.routesMountPath}/`.startsWith(`${s.secretsMountRoot}/`), {
    message: 'routesMountPath must not lie inside secretsMountRoot',
    path: ['routesMountPath'],
  });

export type InjectSettings = z.output<typeof injectSettingsSchema>;
export type InjectSettingsInput = z.input<typeof injectSettingsSchema>;

/** Parse untrusted settings (flags, env); throws an Error listing every problem with its path. */
export function parseInjectSettings(input: unknown): InjectSettings {
  const parsed = injectSettingsSchema.safeParse(input);
  if (!parsed.success) throw new Error(`invalid webhook settings:\n${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

/** The two operations this webhook emits; a subset of fast-json-patch's `Operation`. */
export type JsonPatchOp = { op: 'add'; path: string; value: unknown } | { op: 'replace'; path: string; value: unknown };

export type InjectResult =
  /** Inject: apply `patch`. `warnings` go back to the client in the AdmissionResponse. */
  | { outcome: 'injected'; patch: JsonPatchOp[]; warnings: string[]; skipped?: undefined; denied?: undefined }
  /** Leave the pod alone (allowed, no patch); `skipped` says why, for logs and warnings. */
  | { outcome: 'skipped'; patch: []; warnings: string[]; skipped: string; denied?: undefined }
  /**
   * The pod asked for the sidecar but the request cannot be honoured (no routes ConfigMap named, a bad quantity, ...):
   * refuse it with `denied` as the message rather than start an app whose every vendor call would fail.
   */
  | { outcome: 'denied'; patch: []; warnings: string[]; denied: string; skipped?: undefined };

export interface InjectInput {
  /** `request.object` of the AdmissionReview: untrusted, parsed here. */
  pod: unknown;
  /** `request.namespace` (a pod being created often has no metadata.namespace yet). */
  namespace: string;
  settings: InjectSettings;
}

// The parts of a Pod this module reads. Loose objects: every other field passes through untouched. `nullish` because
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
type ParsedPod = z.infer<typeof podSchema>;
type ParsedContainer = z.infer<typeof containerSchema>;

/** RFC 6901 §3: `~` and `/` inside a reference token are written `~0` and `~1`. */
export function escapeJsonPointer(token: string): string {
  return token.replaceAll('~', '~0').replaceAll('/', '~1');
}

function skip(skipped: string, warnings: string[] = []): InjectResult {
  return { outcome: 'skipped', patch: [], skipped, warnings };
}

/** What the annotations ask for, after validation. */
interface PodRequest {
  routesConfigMap: string;
  secrets: string[];
  redisSecret?: { name: string; key: string };
  native: boolean;
  image: string;
  resources: { requests: Record<string, string>; limits: Record<string, string> };
}

/**
 * Decide whether and how to inject the sidecar into `pod`, and return the JSON Patch. Never throws: anything
 * malformed becomes a `skipped` or `denied` result with a sentence saying why.
 */
export function injectPod(input: InjectInput): InjectResult {
  const { namespace, settings } = input;
  if (settings.excludedNamespaces.includes(namespace)) {
    return skip(`namespace ${namespace} is never injected`);
  }

  const parsed = podSchema.safeParse(input.pod);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? ` at ${issue.path.join('.')}` : '';
    return skip(`the object is not a Pod this webhook can read${where}: ${issue?.message ?? 'invalid'}`);
  }
  const pod = parsed.data;
  const annotations = pod.metadata?.annotations ?? {};

  const want = annotations[ANNOTATIONS.inject];
  if (want === undefined) return skip(`no ${ANNOTATIONS.inject} annotation`);
  if (want === 'false') return skip(`opted out with ${ANNOTATIONS.inject}: "false"`);
  if (want !== 'true') {
    return deny([`${ANNOTATIONS.inject} must be "true" or "false", got ${JSON.stringify(want)}`], []);
  }

  // Idempotence rests on the container itself: present after our own patch (a reinvocation, a retried request) or
  // written by hand (k8s/manual-sidecar/). Our `injected` annotation only tells the two apart; on its own (a manifest
  // copied from an injected pod, minus the container) it is stale and the pod is injected.
  const allContainers = [...(pod.spec.initContainers ?? []), ...pod.spec.containers];
  if (allContainers.some((c) => c.name === SIDECAR_CONTAINER_NAME)) {
    return skip(
      annotations[ANNOTATIONS.injected] === 'true'
        ? 'already injected'
        : `the pod already has a container named ${SIDECAR_CONTAINER_NAME}`,
    );
  }

  if (pod.spec.hostNetwork === true) {
    // The pod's loopback is the node's: 127.0.0.1:15080 would be shared by every hostNetwork pod on the node.
    const why = 'hostNetwork pods are not injected: their 127.0.0.1 is the node\'s';
    return skip(why, [`token-sidecar: ${why}`]);
  }

  const warnings: string[] = [];
  const problems: string[] = [];
  const request = readRequest(annotations, settings, problems, warnings);
  checkConflicts(pod, allContainers, problems);
  if (problems.length > 0 || request === undefined) return deny(problems, warnings);

  return {
    outcome: 'injected',
    patch: buildPatch(pod, request, settings, warnings),
    warnings,
  };
}

function deny(problems: string[], warnings: string[]): InjectResult {
  return {
    outcome: 'denied',
    patch: [],
    warnings,
    denied: `token-sidecar cannot be injected: ${problems.join('; ')}`,
  };
}

/** Validate every annotation; collect all problems (not just the first) so one round trip fixes them all. */
function readRequest(
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
    } else if (!/^[^\s]+$/.test(imageRaw)) {
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

/** Things in the pod that would make the injected sidecar fail or clash. */
function checkConflicts(pod: ParsedPod, containers: ParsedContainer[], problems: string[]): void {
  const ourVolumes = new Set([ROUTES_VOLUME_NAME]);
  for (const v of pod.spec.volumes ?? []) {
    if (ourVolumes.has(v.name) || v.name.startsWith(SECRET_VOLUME_PREFIX)) {
      problems.push(`the pod already has a volume named ${v.name}, which the sidecar needs`);
    }
  }
  // All containers of a pod share one network namespace: a second listener on these ports cannot bind.
  for (const c of containers) {
    for (const p of c.ports ?? []) {
      if (p.containerPort === PROXY_PORT || p.containerPort === ADMIN_PORT) {
        problems.push(`container ${c.name} declares port ${p.containerPort}, which the sidecar listens on`);
      }
    }
  }
}

/**
 * Kubelet runs a container's postStart hook before it starts the next container of the pod, so a first container
 * whose hook waits for the proxy holds the app back until the sidecar is ready. This is the regular-container
 * fallback's stand-in for a native sidecar's startupProbe (Istio's `holdApplicationUntilProxyStarts` does the same).
 * It always exits 0: a failing postStart would kill the sidecar, and after the bound readiness takes over.
 */
const WAIT_FOR_READY_JS =
  "const h=require('node:http'),end=Date.now()+120000;" +
  'const again=()=>{if(Date.now()>end)process.exit(0);setTimeout(poll,250)};' +
  `function poll(){const r=h.get({host:'127.0.0.1',port:${ADMIN_PORT},path:'/readyz',timeout:1000},` +
  '(s)=>{s.resume();if(s.statusCode===200)process.exit(0);again()});' +
  "r.on('timeout',()=>r.destroy());r.on('error',again)}poll()";

function buildContainer(pod: ParsedPod, req: PodRequest, settings: InjectSettings, warnings: string[]): object {
  // Our port names come from the contract, but a Service may target an app port by name: if an app container already
  // uses one of these names, leave ours unnamed rather than make that Service's targetPort ambiguous.
  const taken = new Set(
    [...(pod.spec.initContainers ?? []), ...pod.spec.containers].flatMap((c) => (c.ports ?? []).map((p) => p.name)),
  );
  const port = (name: string, containerPort: number): object => {
    if (!taken.has(name)) return { name, containerPort, protocol: 'TCP' };
    warnings.push(`token-sidecar: port name "${name}" is used by the app, the sidecar's port ${containerPort} is unnamed`);
    return { containerPort, protocol: 'TCP' };
  };
  const probe = (path: string, periodSeconds: number, failureThreshold: number): object => ({
    httpGet: { path, port: ADMIN_PORT, scheme: 'HTTP' },
    periodSeconds,
    failureThreshold,
    timeoutSeconds: 2,
  });

  const env: object[] = [];
  if (req.redisSecret) {
    env.push({
      name: 'REDIS_PASSWORD',
      valueFrom: { secretKeyRef: { name: req.redisSecret.name, key: req.redisSecret.key } },
    });
  }

  const volumeMounts: object[] = [
    { name: ROUTES_VOLUME_NAME, mountPath: settings.routesMountPath, readOnly: true },
    ...req.secrets.map((name, i) => ({
      name: `${SECRET_VOLUME_PREFIX}${i}`,
      mountPath: `${settings.secretsMountRoot}/${name}`,
      readOnly: true,
    })),
  ];

  const resources: Record<string, Record<string, string>> = { requests: req.resources.requests };
  if (Object.keys(req.resources.limits).length > 0) resources.limits = req.resources.limits;

  return {
    name: SIDECAR_CONTAINER_NAME,
    image: req.image,
    imagePullPolicy: settings.imagePullPolicy,
    args: ['start', '--config', `${settings.routesMountPath}/${ROUTES_FILE_NAME}`],
    ports: [port('proxy', PROXY_PORT), port('admin', ADMIN_PORT)],
    ...(env.length > 0 ? { env } : {}),
    resources,
    volumeMounts,
    // /readyz: config loaded, listener up, `warm: true` routes hold a token. As a startupProbe it gates the next
    // init container and the app (KEP-753); 1 s x 120 gives a slow token endpoint two minutes.
    startupProbe: probe('/readyz', 1, 120),
    // For a native sidecar, readiness counts towards the pod's Ready condition; the sidecar's /readyz does not depend
    // on Redis or the token endpoint after start, so a vendor outage never takes the pod out of its Service.
    readinessProbe: probe('/readyz', 5, 2),
    // /healthz only says the event loop is alive: a liveness probe that followed dependencies would restart
    // healthy sidecars during someone else's outage.
    livenessProbe: probe('/healthz', 10, 3),
    securityContext: {
      runAsNonRoot: true,
      runAsUser: settings.runAsUser,
      runAsGroup: settings.runAsUser,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      privileged: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationMessagePolicy: 'FallbackToLogsOnError',
    ...(req.native
      ? { restartPolicy: 'Always' }
      : {
          lifecycle: {
            postStart: { exec: { command: ['node', '-e', WAIT_FOR_READY_JS] } },
            // A regular container is signalled together with the app; hold SIGTERM back so the app can still reach
            // its vendors while it shuts down. `node` rather than `sleep`: the image is only known to contain node.
            ...(settings.fallbackPreStopSeconds > 0
              ? {
                  preStop: {
                    exec: {
                      command: ['node', '-e', `setTimeout(()=>{},${settings.fallbackPreStopSeconds * 1000})`],
                    },
                  },
                }
              : {}),
          },
        }),
  };
}

function buildPatch(pod: ParsedPod, req: PodRequest, settings: InjectSettings, warnings: string[]): JsonPatchOp[] {
  const patch: JsonPatchOp[] = [];
  const container = buildContainer(pod, req, settings, warnings);

  if (req.native) {
    // First among init containers, so it is running (startupProbe passed) before any other init container runs.
    // RFC 6902 `add` to `/spec/initContainers/0` fails when the array does not exist: create it instead.
    if (pod.spec.initContainers == null) {
      patch.push({ op: 'add', path: '/spec/initContainers', value: [container] });
    } else {
      patch.push({ op: 'add', path: '/spec/initContainers/0', value: container });
    }
  } else {
    // First among containers: kubelet starts containers in order and waits for each postStart hook.
    patch.push({ op: 'add', path: '/spec/containers/0', value: container });
  }

  const volumes: object[] = [
    // The whole ConfigMap, not a subPath: the sidecar hot-reloads routes.yaml on the kubelet's `..data` swap, and the
    // ConfigMap may carry other non-secret files routes.yaml refers to (a vendor CA bundle, say).
    { name: ROUTES_VOLUME_NAME, configMap: { name: req.routesConfigMap } },
    ...req.secrets.map((secretName, i) => ({ name: `${SECRET_VOLUME_PREFIX}${i}`, secret: { secretName } })),
  ];
  if (pod.spec.volumes == null) {
    patch.push({ op: 'add', path: '/spec/volumes', value: volumes });
  } else {
    for (const v of volumes) patch.push({ op: 'add', path: '/spec/volumes/-', value: v });
  }

  // The sidecar needs its drain time after SIGTERM (and, as a regular container, its preStop hold before it).
  // Unset means the default of 30 s, enough unless the settings ask for more.
  const neededGraceSeconds = settings.drainTimeoutSeconds + 5 + (req.native ? 0 : settings.fallbackPreStopSeconds);
  const grace = pod.spec.terminationGracePeriodSeconds;
  if ((grace ?? 30) < neededGraceSeconds) {
    patch.push({
      op: grace == null ? 'add' : 'replace',
      path: '/spec/terminationGracePeriodSeconds',
      value: neededGraceSeconds,
    });
    warnings.push(
      `token-sidecar: terminationGracePeriodSeconds raised to ${neededGraceSeconds} so the sidecar can drain`,
    );
  }

  // The inject annotation is present (we only get here if it is), so the annotations map exists and single keys
  // can be added. `/` in the key is escaped per RFC 6901.
  const annotationPath = (key: string): string => `/metadata/annotations/${escapeJsonPointer(key)}`;
  patch.push({ op: 'add', path: annotationPath(ANNOTATIONS.injected), value: 'true' });
  const firstApp = pod.spec.containers[0];
  if (!req.native && firstApp && pod.metadata?.annotations?.[DEFAULT_CONTAINER_ANNOTATION] === undefined) {
    // The sidecar is now containers[0], which kubectl logs/exec would otherwise pick.
    patch.push({ op: 'add', path: annotationPath(DEFAULT_CONTAINER_ANNOTATION), value: firstApp.name });
  }
  return patch;
}
