/**
 * Renders every kustomization under k8s/ with `kubectl kustomize` (offline, no cluster) and checks each document:
 * against Kubernetes' own OpenAPI schemas (kubernetes-models), for fields Kubernetes does not know, and for the
 * properties the install depends on (webhook wiring, TLS wiring, restricted security contexts).
 * cert-manager's Issuer/Certificate have no kubernetes-models class; they are checked structurally below.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { applyPatch, type Operation } from 'fast-json-patch';
import { ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount, type IPod } from 'kubernetes-models/v1';
import { Deployment, StatefulSet } from 'kubernetes-models/apps/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { MutatingWebhookConfiguration } from 'kubernetes-models/admissionregistration.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ANNOTATIONS, injectPod, parseInjectSettings, SIDECAR_CONTAINER_NAME } from '../../src/webhook/inject.js';
import { configSchema } from '../../src/config/schema.js';
import { unknownFieldsOfObject } from '../helpers/kubernetes-fields.js';

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const k8sDir = join(repoRoot, 'k8s');

type Json = Record<string, unknown>;
interface Doc extends Json {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
}
interface Container {
  name: string;
  image?: string;
  env?: { name: string; value?: string; valueFrom?: Json }[];
  ports?: { name?: string; containerPort: number }[];
  securityContext?: Json;
  volumeMounts?: { name: string; mountPath: string; subPath?: string; readOnly?: boolean }[];
  restartPolicy?: string;
}
interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  securityContext?: Json;
  volumes?: { name: string; secret?: { secretName: string }; configMap?: { name: string } }[];
  automountServiceAccountToken?: boolean;
  hostNetwork?: boolean;
}
interface PodTemplate {
  metadata?: { annotations?: Record<string, string>; labels?: Record<string, string> };
  spec: PodSpec;
}

/** apiVersion/kind -> the kubernetes-models class that validates it. */
const MODELS: Record<string, (doc: Doc) => { validate(): void }> = {
  'v1/Namespace': (d) => new Namespace(d as never),
  'v1/ServiceAccount': (d) => new ServiceAccount(d as never),
  'v1/Service': (d) => new Service(d as never),
  'v1/ConfigMap': (d) => new ConfigMap(d as never),
  'v1/Secret': (d) => new Secret(d as never),
  'apps/v1/Deployment': (d) => new Deployment(d as never),
  'apps/v1/StatefulSet': (d) => new StatefulSet(d as never),
  'policy/v1/PodDisruptionBudget': (d) => new PodDisruptionBudget(d as never),
  'rbac.authorization.k8s.io/v1/Role': (d) => new Role(d as never),
  'rbac.authorization.k8s.io/v1/RoleBinding': (d) => new RoleBinding(d as never),
  'rbac.authorization.k8s.io/v1/ClusterRole': (d) => new ClusterRole(d as never),
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': (d) => new ClusterRoleBinding(d as never),
  'admissionregistration.k8s.io/v1/MutatingWebhookConfiguration': (d) => new MutatingWebhookConfiguration(d as never),
};
const CERT_MANAGER = 'cert-manager.io/v1';

async function render(dir: string): Promise<Doc[]> {
  let stdout: string;
  try {
    ({ stdout } = await run('kubectl', ['kustomize', dir], { maxBuffer: 16 * 1024 * 1024 }));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('kubectl not found: these checks render k8s/ with `kubectl kustomize` (kubectl >= 1.27)');
    }
    throw err;
  }
  return parseAllDocuments(stdout).map((d) => d.toJS() as Doc);
}

function find(docs: Doc[], kind: string, name: string): Doc {
  const doc = docs.find((d) => d.kind === kind && d.metadata.name === name);
  if (!doc) throw new Error(`${kind}/${name} not rendered`);
  return doc;
}

function podTemplates(docs: Doc[]): { owner: string; namespace: string; template: PodTemplate }[] {
  return docs
    .filter((d) => d.kind === 'Deployment' || d.kind === 'StatefulSet')
    .map((d) => ({
      owner: `${d.kind}/${d.metadata.name}`,
      namespace: d.metadata.namespace ?? 'default',
      template: (d.spec as { template: PodTemplate }).template,
    }));
}

/** Structural check of the cert-manager kinds (no published schema in kubernetes-models). */
function checkCertManager(doc: Doc): void {
  const spec = doc.spec as Json;
  expect(doc.metadata.namespace, `${doc.kind}/${doc.metadata.name} namespace`).toBeTruthy();
  if (doc.kind === 'Issuer') {
    const kinds = ['selfSigned', 'ca'].filter((k) => k in spec);
    expect(kinds, `Issuer/${doc.metadata.name} has exactly one issuer type`).toHaveLength(1);
    if ('ca' in spec) expect((spec.ca as Json).secretName).toEqual(expect.any(String));
  } else if (doc.kind === 'Certificate') {
    expect(spec.secretName).toEqual(expect.any(String));
    expect(spec.issuerRef).toMatchObject({ kind: 'Issuer', group: 'cert-manager.io', name: expect.any(String) });
    expect(spec.duration).toMatch(/^\d+h$/);
    expect(spec.renewBefore).toMatch(/^\d+h$/);
    if (!spec.isCA) expect(spec.dnsNames).toEqual(expect.arrayContaining([expect.stringMatching(/\.svc$/)]));
  } else {
    throw new Error(`unexpected cert-manager kind ${doc.kind}`);
  }
}

/** Every rendered document validates; returns how many went through kubernetes-models. */
function validateAll(docs: Doc[]): void {
  for (const doc of docs) {
    const where = `${doc.kind}/${doc.metadata.name}`;
    if (doc.apiVersion === CERT_MANAGER) {
      checkCertManager(doc);
      continue;
    }
    const model = MODELS[`${doc.apiVersion}/${doc.kind}`];
    expect(model, `${doc.apiVersion} ${doc.kind} has a model`).toBeDefined();
    expect(() => model?.(doc).validate(), where).not.toThrow();
    expect(unknownFieldsOfObject(doc), `${where}: fields Kubernetes does not know`).toEqual([]);
  }
}

/** The restricted Pod Security Standard, per container (pod-level values count where the container sets none). */
function expectRestricted(owner: string, spec: PodSpec): void {
  const pod = spec.securityContext ?? {};
  for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
    const sc = c.securityContext ?? {};
    const where = `${owner} container ${c.name}`;
    expect(sc.runAsNonRoot ?? pod.runAsNonRoot, `${where} runAsNonRoot`).toBe(true);
    expect(sc.runAsUser ?? pod.runAsUser, `${where} runAsUser is not root`).not.toBe(0);
    expect(sc.allowPrivilegeEscalation, `${where} allowPrivilegeEscalation`).toBe(false);
    expect(sc.readOnlyRootFilesystem, `${where} readOnlyRootFilesystem`).toBe(true);
    expect(sc.capabilities, `${where} capabilities`).toEqual({ drop: ['ALL'] });
    expect(sc.seccompProfile ?? pod.seccompProfile, `${where} seccompProfile`).toEqual({ type: 'RuntimeDefault' });
    expect(sc.privileged ?? false, `${where} privileged`).toBe(false);
    for (const m of c.volumeMounts ?? []) expect(m.subPath, `${where} mount ${m.name} uses subPath`).toBeUndefined();
  }
  expect(spec.hostNetwork ?? false).toBe(false);
}

describe('kubectl kustomize k8s/ (the webhook with cert-manager TLS)', () => {
  let docs: Doc[];
  beforeAll(async () => {
    docs = await render(k8sDir);
  });

  it('renders 10 documents, all valid', () => {
    expect(docs.map((d) => `${d.kind}/${d.metadata.name}`).sort()).toEqual(
      [
        'Certificate/token-sidecar-webhook',
        'Certificate/token-sidecar-webhook-ca',
        'Deployment/token-sidecar-webhook',
        'Issuer/token-sidecar-ca',
        'Issuer/token-sidecar-selfsigned',
        'MutatingWebhookConfiguration/token-sidecar',
        'Namespace/token-sidecar-system',
        'PodDisruptionBudget/token-sidecar-webhook',
        'Service/token-sidecar-webhook',
        'ServiceAccount/token-sidecar-webhook',
      ].sort(),
    );
    validateAll(docs);
  });

  it('MutatingWebhookConfiguration: explicit policies, namespace opt-in by label, pods on CREATE only', () => {
    const mwc = find(docs, 'MutatingWebhookConfiguration', 'token-sidecar');
    const webhooks = mwc.webhooks as Json[];
    expect(webhooks).toHaveLength(1);
    const wh = webhooks[0] ?? {};
    expect(wh).toMatchObject({
      name: 'inject.token-sidecar.io',
      admissionReviewVersions: ['v1'],
      sideEffects: 'None',
      failurePolicy: 'Fail',
      matchPolicy: 'Equivalent',
      reinvocationPolicy: 'IfNeeded',
      rules: [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }],
      namespaceSelector: { matchLabels: { 'token-sidecar.io/injection': 'enabled' } },
    });
    expect(wh.timeoutSeconds).toBeLessThanOrEqual(10);
    const excluded = (wh.namespaceSelector as { matchExpressions: { values: string[] }[] }).matchExpressions[0]?.values;
    expect(excluded).toEqual(expect.arrayContaining(['kube-system', 'token-sidecar-system']));
    expect(JSON.stringify(wh.matchConditions)).toContain(ANNOTATIONS.inject);

    // The webhook's clientConfig reaches the Service, which reaches the Deployment's port.
    const svc = find(docs, 'Service', 'token-sidecar-webhook');
    const svcSpec = svc.spec as { ports: { port: number; targetPort: string }[]; selector: Record<string, string> };
    expect(wh.clientConfig).toEqual({
      service: { name: svc.metadata.name, namespace: svc.metadata.namespace, path: '/mutate', port: svcSpec.ports[0]?.port },
    });
    const deploy = find(docs, 'Deployment', 'token-sidecar-webhook');
    const template = (deploy.spec as { template: PodTemplate }).template;
    expect(template.metadata?.labels).toMatchObject(svcSpec.selector);
    expect(template.spec.containers[0]?.ports?.map((p) => p.name)).toContain(svcSpec.ports[0]?.targetPort);
  });

  it('TLS: cert-manager issues the Secret the webhook mounts, for the Service name, and injects its CA', () => {
    const mwc = find(docs, 'MutatingWebhookConfiguration', 'token-sidecar');
    const [certNs, certName] = (mwc.metadata.annotations?.['cert-manager.io/inject-ca-from'] ?? '').split('/');
    const cert = find(docs, 'Certificate', certName ?? '');
    expect(cert.metadata.namespace).toBe(certNs);
    const deploy = find(docs, 'Deployment', 'token-sidecar-webhook');
    const volumes = (deploy.spec as { template: PodTemplate }).template.spec.volumes ?? [];
    expect(volumes.map((v) => v.secret?.secretName)).toContain((cert.spec as Json).secretName);
    expect((cert.spec as { dnsNames: string[] }).dnsNames).toContain('token-sidecar-webhook.token-sidecar-system.svc');
    // The serving certificate is signed by the CA Issuer (stable caBundle across renewals), not self-signed.
    const issuer = find(docs, 'Issuer', (cert.spec as { issuerRef: { name: string } }).issuerRef.name);
    expect(issuer.spec).toHaveProperty('ca');
  });

  it('webhook Deployment: 2 replicas, no API access, restricted, injects its own image', () => {
    expect(docs.filter((d) => d.apiVersion.startsWith('rbac.authorization.k8s.io/'))).toEqual([]);
    expect(find(docs, 'ServiceAccount', 'token-sidecar-webhook').automountServiceAccountToken).toBe(false);
    const deploy = find(docs, 'Deployment', 'token-sidecar-webhook');
    const spec = deploy.spec as { replicas: number; template: PodTemplate };
    expect(spec.replicas).toBe(2);
    expect(spec.template.spec.automountServiceAccountToken).toBe(false);
    expectRestricted('Deployment/token-sidecar-webhook', spec.template.spec);
    const container = spec.template.spec.containers[0];
    expect(container?.env?.find((e) => e.name === 'TOKEN_SIDECAR_IMAGE')?.value).toBe(container?.image);
    expect(find(docs, 'PodDisruptionBudget', 'token-sidecar-webhook').spec).toMatchObject({ minAvailable: 1 });
  });

  it('`kustomize edit set image` moves the webhook and the injected sidecar image together', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'k8s-images-'));
    try {
      await writeFile(
        join(dir, 'kustomization.yaml'),
        [
          'resources:',
          `  - ${relative(dir, join(k8sDir, 'base'))}`,
          'images:',
          '  - name: token-sidecar',
          '    newName: registry.example.com/platform/token-sidecar',
          '    newTag: 9.9.9',
          '',
        ].join('\n'),
      );
      const overlay = await render(dir);
      const container = (find(overlay, 'Deployment', 'token-sidecar-webhook').spec as { template: PodTemplate }).template
        .spec.containers[0];
      expect(container?.image).toBe('registry.example.com/platform/token-sidecar:9.9.9');
      expect(container?.env?.find((e) => e.name === 'TOKEN_SIDECAR_IMAGE')?.value).toBe(
        'registry.example.com/platform/token-sidecar:9.9.9',
      );
      // Values that merely look like images are left alone.
      expect(container?.env?.find((e) => e.name === 'TOKEN_SIDECAR_WEBHOOK_LISTEN')?.value).toBe('0.0.0.0:8443');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('kubectl kustomize k8s/self-signed/ (no cert-manager)', () => {
  it('renders the 6 base documents, no cert-manager kinds or annotation', async () => {
    const docs = await render(join(k8sDir, 'self-signed'));
    expect(docs).toHaveLength(6);
    validateAll(docs);
    expect(docs.some((d) => d.apiVersion === CERT_MANAGER)).toBe(false);
    const mwc = find(docs, 'MutatingWebhookConfiguration', 'token-sidecar');
    expect(mwc.metadata.annotations?.['cert-manager.io/inject-ca-from']).toBeUndefined();
  });
});

describe('kubectl kustomize k8s/dev/ (webhook + Redis + an annotated app)', () => {
  let docs: Doc[];
  beforeAll(async () => {
    docs = await render(join(k8sDir, 'dev'));
  });

  it('renders 17 documents, all valid, every pod restricted', () => {
    expect(docs).toHaveLength(17);
    validateAll(docs);
    for (const { owner, template } of podTemplates(docs)) expectRestricted(owner, template.spec);
  });

  it('the annotated app gets a valid, restricted pod from the real injector, with everything it names present', () => {
    const webhook = find(docs, 'Deployment', 'token-sidecar-webhook');
    const image = (webhook.spec as { template: PodTemplate }).template.spec.containers[0]?.env?.find(
      (e) => e.name === 'TOKEN_SIDECAR_IMAGE',
    )?.value;
    const settings = parseInjectSettings({ image });
    const app = find(docs, 'Deployment', 'payments-api');
    const ns = app.metadata.namespace ?? '';
    expect(find(docs, 'Namespace', ns).metadata.labels).toMatchObject({ 'token-sidecar.io/injection': 'enabled' });

    const template = (app.spec as { template: PodTemplate }).template;
    const pod = { apiVersion: 'v1', kind: 'Pod', metadata: template.metadata, spec: template.spec };
    const result = injectPod({ pod, namespace: ns, settings });
    expect(result.outcome).toBe('injected');
    const injected = applyPatch(structuredClone(pod), result.patch as Operation[], true, false).newDocument;
    expect(() => new Pod(injected as unknown as IPod).validate()).not.toThrow();
    expect(unknownFieldsOfObject(injected)).toEqual([]);
    expectRestricted('injected payments-api', injected.spec as PodSpec);

    // The ConfigMap and Secrets the annotations name exist in the app's namespace.
    const annotations = template.metadata?.annotations ?? {};
    const routes = find(docs, 'ConfigMap', annotations[ANNOTATIONS.routes] ?? '');
    expect(routes.metadata.namespace).toBe(ns);
    for (const name of (annotations[ANNOTATIONS.secrets] ?? '').split(',')) {
      expect(find(docs, 'Secret', name.trim()).metadata.namespace).toBe(ns);
    }
    const redisSecret = find(docs, 'Secret', annotations[ANNOTATIONS.redisSecret] ?? '');
    expect(redisSecret.stringData).toHaveProperty('password');
  });

  it('Redis is there for the routes.yaml that points at it', () => {
    const routes = find(docs, 'ConfigMap', 'payments-routes');
    const config = configSchema.parse(parseYaml((routes.data as Record<string, string>)['routes.yaml']));
    expect(config.store.type).toBe('redis');
    const url = config.store.type === 'redis' ? new URL(config.store.redis.url ?? '') : undefined;
    const [svcName, svcNs] = (url?.hostname ?? '').split('.');
    const svc = find(docs, 'Service', svcName ?? '');
    expect(svc.metadata.namespace).toBe(svcNs);
    expect((svc.spec as { ports: { port: number }[] }).ports[0]?.port).toBe(Number(url?.port));
  });
});

describe('kubectl kustomize k8s/manual-sidecar/', () => {
  let docs: Doc[];
  beforeAll(async () => {
    docs = await render(join(k8sDir, 'manual-sidecar'));
  });

  it('renders 4 valid documents in a namespace the webhook does not touch', () => {
    expect(docs).toHaveLength(4);
    validateAll(docs);
    const ns = find(docs, 'Namespace', 'token-sidecar-manual');
    expect(ns.metadata.labels?.['token-sidecar.io/injection']).toBeUndefined();
    for (const { owner, template } of podTemplates(docs)) expectRestricted(owner, template.spec);
  });

  it('the hand-written sidecar is exactly what the webhook would inject', () => {
    const deploy = find(docs, 'Deployment', 'billing-api');
    const template = (deploy.spec as { template: PodTemplate }).template;
    const handWritten = template.spec.initContainers?.find((c) => c.name === SIDECAR_CONTAINER_NAME);
    expect(handWritten).toBeDefined();
    const secretNames = (template.spec.volumes ?? []).flatMap((v) => (v.secret ? [v.secret.secretName] : []));
    const routesName = template.spec.volumes?.find((v) => v.name === 'token-sidecar-routes')?.configMap?.name ?? '';

    // The same pod without its sidecar, annotated instead, through the injector.
    const bare = {
      metadata: {
        annotations: { [ANNOTATIONS.inject]: 'true', [ANNOTATIONS.routes]: routesName, [ANNOTATIONS.secrets]: secretNames.join(',') },
      },
      spec: {
        ...template.spec,
        initContainers: template.spec.initContainers?.filter((c) => c.name !== SIDECAR_CONTAINER_NAME),
        volumes: template.spec.volumes?.filter((v) => !v.name.startsWith('token-sidecar-')),
      },
    };
    const result = injectPod({
      pod: bare,
      namespace: deploy.metadata.namespace ?? '',
      settings: parseInjectSettings({ image: handWritten?.image }),
    });
    const injected = applyPatch(structuredClone(bare), result.patch as Operation[], true, false).newDocument;
    expect(injected.spec.initContainers?.find((c) => c.name === SIDECAR_CONTAINER_NAME)).toEqual(handWritten);
    expect(injected.spec.volumes).toEqual(template.spec.volumes);
  });

  it('routes.yaml refers only to files of the mounted Secrets', () => {
    const routes = find(docs, 'ConfigMap', 'billing-routes');
    const text = (routes.data as Record<string, string>)['routes.yaml'] ?? '';
    configSchema.parse(parseYaml(text));
    const mounted = new Set(
      ((find(docs, 'Deployment', 'billing-api').spec as { template: PodTemplate }).template.spec.initContainers ?? [])
        .flatMap((c) => c.volumeMounts ?? [])
        .map((m) => m.mountPath),
    );
    for (const m of text.matchAll(/fromFile: (\S+?) ?\}/g)) {
      const file = m[1] ?? '';
      expect([...mounted].some((dir) => file.startsWith(`${dir}/`)), `${file} is under a mounted volume`).toBe(true);
    }
  });
});

function parseYaml(text: string | undefined): unknown {
  const [doc] = parseAllDocuments(text ?? '');
  return doc?.toJS();
}
