/**
 * The pure half of the admission webhook: Pod (as the API server sent it) -> RFC 6902 JSON Patch that adds the
 * token-sidecar. No I/O, no clock, no randomness: the same input always yields the same patch, which is what makes
 * reinvocation safe and the golden tests meaningful. The HTTPS envelope lives in server.ts; the settings in
 * settings.ts, reading the pod and its annotations in pod.ts, the sidecar's container and volumes in container.ts.
 *
 * Kubernetes behaviour this relies on, with where it comes from:
 * - Native sidecars (KEP-753, https://kubernetes.io/docs/concepts/workloads/pods/sidecar-containers/): an init
 *   container with `restartPolicy: Always` is started in init order and, once its startupProbe passes, the next init
 *   container (and eventually the app) starts; it keeps running for the pod's life and is stopped only after the app
 *   containers have exited. Beta and on by default since 1.29, GA in 1.33.
 * - Before 1.29 the API server drops the unknown `restartPolicy` field, leaving an init container that never exits
 *   and a pod stuck in `Init:0/1`: hence the `token-sidecar.io/native-sidecar: "false"` fallback (a regular container).
 * - Mutating webhooks may be called again for the same object (reinvocationPolicy, and plain retries), so the patch
 *   must be idempotent (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#idempotence).
 */
import { buildContainer, buildVolumes } from './container.js';
import { parsePod, readPodRequest, type ParsedContainer, type ParsedPod, type PodRequest } from './pod.js';
import {
  ADMIN_PORT,
  ANNOTATIONS,
  PROXY_PORT,
  ROUTES_VOLUME_NAME,
  SECRET_VOLUME_PREFIX,
  SIDECAR_CONTAINER_NAME,
  type InjectSettings,
} from './settings.js';

// test/integration/k8s-manifests.test.ts imports these from here.
export { ANNOTATIONS, SIDECAR_CONTAINER_NAME, parseInjectSettings } from './settings.js';

/** kubectl logs/exec pick this container when no -c is given (kubectl >= 1.21). */
const DEFAULT_CONTAINER_ANNOTATION = 'kubectl.kubernetes.io/default-container';

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

/** RFC 6901 §3: `~` and `/` inside a reference token are written `~0` and `~1`. */
export function escapeJsonPointer(token: string): string {
  return token.replaceAll('~', '~0').replaceAll('/', '~1');
}

function skip(skipped: string, warnings: string[] = []): InjectResult {
  return { outcome: 'skipped', patch: [], skipped, warnings };
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

  const parsed = parsePod(input.pod);
  if (!parsed.ok) return skip(parsed.why);
  const pod = parsed.pod;
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
  const request = readPodRequest(annotations, settings, problems, warnings);
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

  const volumes = buildVolumes(req);
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
