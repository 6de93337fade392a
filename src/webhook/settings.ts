/**
 * The webhook's cluster-wide settings (its flags, parsed once) and the fixed names and ports of the sidecar contract
 * that every other webhook module shares. Pure: no I/O.
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

/** An image reference, checked only as far as "no spaces" (settings and the image annotation alike). */
export const IMAGE_REF_RE = /^[^\s]+$/;

/**
 * Cluster-wide injection settings: the webhook's flags, parsed once with {@link parseInjectSettings}.
 * Every field but `image` has a default that matches the sidecar contract.
 */
export const injectSettingsSchema = z
  .object({
    /** The sidecar image, e.g. `registry.example/token-sidecar:0.1.0` (pin by digest in production). */
    image: z.string().regex(IMAGE_REF_RE, 'an image reference without spaces'),
    imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).default('IfNotPresent'),
    /** Inject as a native sidecar (KEP-753) unless a pod says `token-sidecar.io/native-sidecar: "false"`. */
    nativeSidecar: z.boolean().default(true),
    /**
     * Honour `token-sidecar.io/image`. Off by default: the sidecar holds the pod's vendor credentials, and a platform
     * that vets the sidecar image (signatures, scanning) should not let every pod author swap it.
     */
    allowImageOverride: z.boolean().default(false),
    /**
     * Modest defaults: with the image's --max-semi-space-size=2 and jemalloc the sidecar idles at 66–72 MB RSS
     * (up to ~113 MB for the first 1–2 s after start) and peaked at 80–84 MB under load (bench/README.md). No CPU
     * limit by default: CFS throttling adds latency to every proxied request, and the request already reserves the
     * sidecar's share.
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
