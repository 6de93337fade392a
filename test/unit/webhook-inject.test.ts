import { describe, it, expect } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { applyPatch, type Operation } from 'fast-json-patch';
import { Pod, type IPod } from 'kubernetes-models/v1';
import { escapeJsonPointer, injectPod, type InjectResult } from '../../src/webhook/inject.js';
import {
  ANNOTATIONS,
  SIDECAR_CONTAINER_NAME,
  parseInjectSettings,
  parseQuantity,
  type InjectSettings,
} from '../../src/webhook/settings.js';
import { unknownFieldsOfObject } from '../helpers/kubernetes-fields.js';

const fixtureDir = fileURLToPath(new URL('../fixtures/webhook/', import.meta.url));
/** UPDATE_GOLDEN=1 npx vitest run test/unit/webhook-inject.test.ts rewrites the *.expected.json files. */
const updateGolden = process.env.UPDATE_GOLDEN === '1';

const settings: InjectSettings = parseInjectSettings({ image: 'registry.example/token-sidecar:0.1.0' });

interface Review {
  request: { uid: string; namespace: string; object: Record<string, unknown> };
}
type Json = Record<string, unknown>;
interface ContainerJson {
  name: string;
  restartPolicy?: string;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean; subPath?: string }[];
  securityContext?: Json;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  env?: { name: string; value?: string; valueFrom?: Json }[];
  ports?: { name?: string; containerPort: number }[];
  lifecycle?: Json;
  startupProbe?: Json;
  readinessProbe?: Json;
  livenessProbe?: Json;
}
interface PodJson {
  metadata: { annotations?: Record<string, string>; [k: string]: unknown };
  spec: {
    containers: ContainerJson[];
    initContainers?: ContainerJson[];
    volumes?: { name: string; [k: string]: unknown }[];
    terminationGracePeriodSeconds?: number;
    [k: string]: unknown;
  };
}

function loadReview(name: string): Review {
  return JSON.parse(readFileSync(`${fixtureDir}${name}`, 'utf8')) as Review;
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

/** Apply with fast-json-patch's validation on (a patch that would fail on a real API server fails here). */
function apply(pod: unknown, result: InjectResult): PodJson {
  return applyPatch(clone(pod), result.patch as Operation[], true, false).newDocument as PodJson;
}

/** Kubernetes' own OpenAPI schema for v1.Pod (kubernetes-models). Throws with the failing paths. */
function validatePod(pod: PodJson): void {
  new Pod(pod as unknown as IPod).validate();
  // ...which lets unknown fields through: check those against the same models' declarations.
  expect(unknownFieldsOfObject({ apiVersion: 'v1', kind: 'Pod', ...pod })).toEqual([]);
}

function basicPod(annotations: Record<string, string> = {}, spec: Json = {}): Json {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      generateName: 'app-',
      annotations: { [ANNOTATIONS.inject]: 'true', [ANNOTATIONS.routes]: 'app-routes', ...annotations },
    },
    spec: { containers: [{ name: 'app', image: 'app:1' }], ...spec },
  };
}

function sidecarOf(pod: PodJson): ContainerJson | undefined {
  return [...(pod.spec.initContainers ?? []), ...pod.spec.containers].find((c) => c.name === SIDECAR_CONTAINER_NAME);
}

/** The invariants every injected pod must satisfy, whatever the annotations. */
function expectWellFormedInjection(pod: PodJson): ContainerJson {
  validatePod(pod);
  const sidecar = sidecarOf(pod);
  expect(sidecar).toBeDefined();
  if (!sidecar) throw new Error('unreachable');
  expect(pod.metadata.annotations?.[ANNOTATIONS.injected]).toBe('true');
  expect(sidecar.securityContext).toMatchObject({
    runAsNonRoot: true,
    runAsUser: 10001,
    readOnlyRootFilesystem: true,
    allowPrivilegeEscalation: false,
    capabilities: { drop: ['ALL'] },
    seccompProfile: { type: 'RuntimeDefault' },
  });
  // Whole-volume, read-only mounts only: a subPath mount never sees a rotated Secret.
  for (const m of sidecar.volumeMounts ?? []) {
    expect(m.readOnly).toBe(true);
    expect(m.subPath).toBeUndefined();
    expect(pod.spec.volumes?.some((v) => v.name === m.name)).toBe(true);
  }
  expect(sidecar.startupProbe).toMatchObject({ httpGet: { path: '/readyz', port: 15081 } });
  expect(sidecar.readinessProbe).toMatchObject({ httpGet: { path: '/readyz', port: 15081 } });
  expect(sidecar.livenessProbe).toMatchObject({ httpGet: { path: '/healthz', port: 15081 } });
  return sidecar;
}

describe('injectPod: golden AdmissionReviews', () => {
  for (const fixture of ['review-deployment-pod', 'review-existing-init', 'review-fallback']) {
    it(`${fixture}: patch matches the golden file, applies, validates, and is idempotent`, () => {
      const review = loadReview(`${fixture}.json`);
      const result = injectPod({ pod: review.request.object, namespace: review.request.namespace, settings });
      const goldenFile = `${fixtureDir}${fixture}.expected.json`;
      const actual = { outcome: result.outcome, warnings: result.warnings, patch: result.patch };
      if (updateGolden) writeFileSync(goldenFile, `${JSON.stringify(actual, null, 2)}\n`);
      expect(actual).toEqual(JSON.parse(readFileSync(goldenFile, 'utf8')));

      expect(result.outcome).toBe('injected');
      const patched = apply(review.request.object, result);
      expectWellFormedInjection(patched);

      // Injecting the injected pod again (reinvocation, a retried request) changes nothing.
      const again = injectPod({ pod: patched, namespace: review.request.namespace, settings });
      expect(again).toMatchObject({ outcome: 'skipped', patch: [], skipped: 'already injected' });
    });
  }

  it('native sidecar goes first among existing init containers, with restartPolicy Always', () => {
    const review = loadReview('review-existing-init.json');
    const result = injectPod({ pod: review.request.object, namespace: 'kyc', settings });
    const patched = apply(review.request.object, result);
    expect(patched.spec.initContainers?.map((c) => c.name)).toEqual([SIDECAR_CONTAINER_NAME, 'migrate']);
    expect(patched.spec.initContainers?.[0]?.restartPolicy).toBe('Always');
    expect(patched.spec.containers.map((c) => c.name)).toEqual(['worker']);
    // The pod had no volumes array: it was created, not appended to.
    expect(patched.spec.volumes?.map((v) => v.name)).toEqual(['token-sidecar-routes', 'token-sidecar-secret-0']);
    // terminationGracePeriodSeconds 5 cannot hold a 10 s drain.
    expect(patched.spec.terminationGracePeriodSeconds).toBe(15);
    expect(result.warnings.join('\n')).toMatch(/terminationGracePeriodSeconds raised to 15/);
    // The app already names a port "admin": ours stays unnamed rather than make a Service's targetPort ambiguous.
    const sidecar = sidecarOf(patched);
    expect(sidecar?.ports).toEqual([
      { name: 'proxy', containerPort: 15080, protocol: 'TCP' },
      { containerPort: 15081, protocol: 'TCP' },
    ]);
    expect(sidecar?.env).toContainEqual({
      name: 'REDIS_PASSWORD',
      valueFrom: { secretKeyRef: { name: 'redis-auth', key: 'password' } },
    });
  });

  it('mounts each listed Secret at /var/run/secrets/token-sidecar/<name>/ and the routes ConfigMap whole', () => {
    const review = loadReview('review-deployment-pod.json');
    const patched = apply(
      review.request.object,
      injectPod({ pod: review.request.object, namespace: 'payments', settings }),
    );
    const sidecar = expectWellFormedInjection(patched);
    expect(sidecar.volumeMounts?.map((m) => m.mountPath)).toEqual([
      '/etc/token-sidecar',
      '/var/run/secrets/token-sidecar/pix-credentials',
      '/var/run/secrets/token-sidecar/kyc-credentials',
    ]);
    expect(patched.spec.volumes).toEqual([
      expect.objectContaining({ name: 'kube-api-access-7x2kq' }),
      { name: 'token-sidecar-routes', configMap: { name: 'payments-routes' } },
      { name: 'token-sidecar-secret-0', secret: { secretName: 'pix-credentials' } },
      { name: 'token-sidecar-secret-1', secret: { secretName: 'kyc-credentials' } },
    ]);
    expect(patched.spec.initContainers?.[0]).toMatchObject({
      image: 'registry.example/token-sidecar:0.1.0',
      args: ['start', '--config', '/etc/token-sidecar/routes.yaml'],
      restartPolicy: 'Always',
      resources: { requests: { cpu: '50m', memory: '96Mi' }, limits: { memory: '256Mi' } },
    });
    // The app container is untouched.
    expect(patched.spec.containers).toEqual((review.request.object.spec as PodJson['spec']).containers);
  });

  it('native-sidecar "false": a regular first container with start-up hold and preStop, and resource overrides', () => {
    const review = loadReview('review-fallback.json');
    const result = injectPod({ pod: review.request.object, namespace: 'legacy', settings });
    const patched = apply(review.request.object, result);
    const sidecar = expectWellFormedInjection(patched);
    expect(patched.spec.initContainers).toBeUndefined();
    expect(patched.spec.containers.map((c) => c.name)).toEqual([SIDECAR_CONTAINER_NAME, 'billing', 'log-shipper']);
    expect(sidecar.restartPolicy).toBeUndefined();
    expect(sidecar.lifecycle).toMatchObject({
      postStart: { exec: { command: ['node', '-e', expect.stringContaining('/readyz')] } },
      preStop: { exec: { command: ['node', '-e', 'setTimeout(()=>{},5000)'] } },
    });
    expect(sidecar.resources).toEqual({
      requests: { cpu: '100m', memory: '128Mi' },
      limits: { cpu: '500m', memory: '384Mi' },
    });
    expect(sidecar.env).toContainEqual({
      name: 'REDIS_PASSWORD',
      valueFrom: { secretKeyRef: { name: 'redis-auth', key: 'redis-password' } },
    });
    // kubectl logs/exec keep defaulting to the app, not to the sidecar that is now containers[0].
    expect(patched.metadata.annotations?.['kubectl.kubernetes.io/default-container']).toBe('billing');
  });

  it('the postStart hold is valid JavaScript', () => {
    const review = loadReview('review-fallback.json');
    const patched = apply(
      review.request.object,
      injectPod({ pod: review.request.object, namespace: 'legacy', settings }),
    );
    const hook = sidecarOf(patched)?.lifecycle as { postStart: { exec: { command: string[] } } };
    const source = hook.postStart.exec.command[2] ?? '';
    // Compiles (does not run): a syntax error here would kill every fallback sidecar at start.
    expect(() => new Function('require', 'process', source)).not.toThrow();
  });
});

describe('injectPod: when not to inject', () => {
  it('a pod without the annotation is left alone', () => {
    const pod = basicPod();
    delete (pod.metadata as { annotations?: unknown }).annotations;
    expect(injectPod({ pod, namespace: 'default', settings })).toEqual({
      outcome: 'skipped',
      patch: [],
      warnings: [],
      skipped: 'no token-sidecar.io/inject annotation',
    });
  });

  it('opt-out with inject: "false"', () => {
    const result = injectPod({ pod: basicPod({ [ANNOTATIONS.inject]: 'false' }), namespace: 'default', settings });
    expect(result).toMatchObject({ outcome: 'skipped', patch: [], skipped: expect.stringMatching(/opted out/) });
  });

  it('kube-system is never injected, even when asked', () => {
    const result = injectPod({ pod: basicPod(), namespace: 'kube-system', settings });
    expect(result).toMatchObject({ outcome: 'skipped', patch: [], skipped: 'namespace kube-system is never injected' });
  });

  it('hostNetwork pods are skipped with a warning (their loopback is the node\'s)', () => {
    const result = injectPod({ pod: basicPod({}, { hostNetwork: true }), namespace: 'default', settings });
    expect(result).toMatchObject({ outcome: 'skipped', patch: [], skipped: expect.stringMatching(/hostNetwork/) });
    expect(result.warnings).toHaveLength(1);
  });

  it('a stale injected annotation without the container does not stop injection', () => {
    const pod = basicPod({ [ANNOTATIONS.injected]: 'true' });
    const result = injectPod({ pod, namespace: 'default', settings });
    expect(result.outcome).toBe('injected');
    expectWellFormedInjection(apply(pod, result));
  });

  it('a pod with a hand-written token-sidecar container is not injected again', () => {
    const pod = basicPod({}, { containers: [{ name: 'app', image: 'a' }, { name: 'token-sidecar', image: 's' }] });
    expect(injectPod({ pod, namespace: 'default', settings })).toMatchObject({
      outcome: 'skipped',
      skipped: 'the pod already has a container named token-sidecar',
    });
  });
});

describe('injectPod: malformed input never throws', () => {
  const cases: [string, unknown][] = [
    ['a string', 'not a pod'],
    ['null', null],
    ['an array', []],
    ['no spec', { metadata: { annotations: { [ANNOTATIONS.inject]: 'true' } } }],
    ['annotations of the wrong type', { metadata: { annotations: 42 }, spec: { containers: [{ name: 'a' }] } }],
    ['an annotation value that is not a string', basicPod({ [ANNOTATIONS.routes]: 7 as unknown as string })],
    ['containers not an array', { metadata: {}, spec: { containers: 'app' } }],
    ['no containers', { metadata: {}, spec: { containers: [] } }],
    ['a container without a name', { metadata: {}, spec: { containers: [{ image: 'x' }] } }],
    ['volumes of the wrong type', basicPod({}, { volumes: {} })],
  ];
  for (const [what, pod] of cases) {
    it(`${what} -> skipped with a reason`, () => {
      const result = injectPod({ pod, namespace: 'default', settings });
      expect(result.outcome).toBe('skipped');
      expect(result.patch).toEqual([]);
      expect(result.skipped).toMatch(/not a Pod this webhook can read/);
    });
  }

  it('explicit nulls from the API server are treated as absent', () => {
    const pod = basicPod({}, { initContainers: null, volumes: null, terminationGracePeriodSeconds: null });
    const result = injectPod({ pod, namespace: 'default', settings });
    expect(result.outcome).toBe('injected');
    expectWellFormedInjection(apply(pod, result));
  });
});

describe('injectPod: annotations that cannot be honoured are denied with every problem named', () => {
  function denied(annotations: Record<string, string>, spec: Json = {}): string {
    const result = injectPod({ pod: basicPod(annotations, spec), namespace: 'default', settings });
    expect(result.outcome).toBe('denied');
    expect(result.patch).toEqual([]);
    return result.denied ?? '';
  }

  it('the routes annotation is required', () => {
    const pod = basicPod();
    delete (pod.metadata as { annotations: Record<string, string> }).annotations[ANNOTATIONS.routes];
    const result = injectPod({ pod, namespace: 'default', settings });
    expect(result).toMatchObject({
      outcome: 'denied',
      denied: expect.stringContaining('annotation token-sidecar.io/routes is required'),
    });
  });

  it('bad quantities, all of them', () => {
    const message = denied({ [ANNOTATIONS.memoryLimit]: 'lots', [ANNOTATIONS.cpuRequest]: '-1' });
    expect(message).toContain('token-sidecar.io/memory-limit: "lots" is not a Kubernetes quantity');
    expect(message).toContain('token-sidecar.io/cpu-request: "-1" is not a Kubernetes quantity');
  });

  it('a request above its limit', () => {
    expect(denied({ [ANNOTATIONS.memoryRequest]: '1Gi', [ANNOTATIONS.memoryLimit]: '512Mi' })).toContain(
      'memory request 1Gi exceeds memory limit 512Mi',
    );
    expect(denied({ [ANNOTATIONS.cpuRequest]: '2', [ANNOTATIONS.cpuLimit]: '1500m' })).toContain(
      'cpu request 2 exceeds cpu limit 1500m',
    );
  });

  it('invalid names and values', () => {
    expect(denied({ [ANNOTATIONS.routes]: 'Bad_Name' })).toContain('is not a valid ConfigMap name');
    expect(denied({ [ANNOTATIONS.secrets]: 'ok,../../etc' })).toContain('"../../etc" is not a valid Secret name');
    expect(denied({ [ANNOTATIONS.redisSecret]: 'a:b:c' })).toContain('token-sidecar.io/redis-secret');
    expect(denied({ [ANNOTATIONS.nativeSidecar]: 'no' })).toContain('token-sidecar.io/native-sidecar must be');
    expect(denied({ [ANNOTATIONS.inject]: 'yes' })).toContain('token-sidecar.io/inject must be "true" or "false"');
  });

  it('volume and port clashes', () => {
    expect(denied({}, { volumes: [{ name: 'token-sidecar-routes', emptyDir: {} }] })).toContain(
      'already has a volume named token-sidecar-routes',
    );
    expect(
      denied({}, { containers: [{ name: 'app', image: 'a', ports: [{ containerPort: 15080 }] }] }),
    ).toContain('container app declares port 15080');
  });
});

describe('injectPod: settings and overrides', () => {
  it('the image annotation is ignored (with a warning) unless the webhook allows overrides', () => {
    const pod = basicPod({ [ANNOTATIONS.image]: 'evil.example/sidecar:latest' });
    const locked = injectPod({ pod, namespace: 'default', settings });
    expect(locked.outcome).toBe('injected');
    expect(sidecarOf(apply(pod, locked))).toMatchObject({ image: 'registry.example/token-sidecar:0.1.0' });
    expect(locked.warnings.join()).toMatch(/image ignored/);

    const open = parseInjectSettings({ image: 'registry.example/token-sidecar:0.1.0', allowImageOverride: true });
    const allowed = injectPod({ pod, namespace: 'default', settings: open });
    expect(sidecarOf(apply(pod, allowed))).toMatchObject({ image: 'evil.example/sidecar:latest' });
  });

  it('a cluster-wide nativeSidecar: false is overridden per pod by native-sidecar: "true"', () => {
    const legacy = parseInjectSettings({ image: 'ts:1', nativeSidecar: false });
    const byDefault = apply(basicPod(), injectPod({ pod: basicPod(), namespace: 'd', settings: legacy }));
    expect(byDefault.spec.containers[0]?.name).toBe(SIDECAR_CONTAINER_NAME);
    const pod = basicPod({ [ANNOTATIONS.nativeSidecar]: 'true' });
    const native = apply(pod, injectPod({ pod, namespace: 'd', settings: legacy }));
    expect(native.spec.initContainers?.[0]?.name).toBe(SIDECAR_CONTAINER_NAME);
  });

  it('annotation keys are escaped per RFC 6901', () => {
    expect(escapeJsonPointer('token-sidecar.io/injected')).toBe('token-sidecar.io~1injected');
    expect(escapeJsonPointer('a~b/c')).toBe('a~0b~1c');
  });

  it('is deterministic: same input, same patch', () => {
    const review = loadReview('review-deployment-pod.json');
    const a = injectPod({ pod: review.request.object, namespace: 'payments', settings });
    const b = injectPod({ pod: clone(review.request.object), namespace: 'payments', settings });
    expect(a).toEqual(b);
  });
});

describe('parseQuantity and parseInjectSettings', () => {
  it('parses the Kubernetes quantity forms', () => {
    expect(parseQuantity('50m')).toBeCloseTo(0.05);
    expect(parseQuantity('1')).toBe(1);
    expect(parseQuantity('0.5')).toBe(0.5);
    expect(parseQuantity('128Mi')).toBe(128 * 2 ** 20);
    expect(parseQuantity('1G')).toBe(1e9);
    expect(parseQuantity('1e3')).toBe(1000);
    for (const bad of ['', 'abc', '-1', '1 Gi', '1gi', 'Mi', '1.', '1Mb']) expect(parseQuantity(bad)).toBeUndefined();
  });

  it('reports every bad setting with its path', () => {
    expect(() =>
      parseInjectSettings({ image: 'has space', resources: { memoryLimit: 'big' }, imagePullPolicy: 'Sometimes' }),
    ).toThrow(/image[\s\S]*imagePullPolicy|imagePullPolicy[\s\S]*image/);
    expect(() => parseInjectSettings({ image: 'x', resources: { memoryLimit: 'big' } })).toThrow(/resources\.memoryLimit/);
    expect(() => parseInjectSettings({ image: 'x', unknown: 1 })).toThrow(/unknown/i);
  });
});
