/**
 * The sidecar's part of the pod spec: its container (ports, probes, mounts, security context, and the native or
 * regular-container lifecycle) and the volumes it mounts. Pure: no I/O, the same request always yields the same objects.
 *
 * Secret and ConfigMap volumes are updated in place through an atomic `..data` symlink swap, but a `subPath` mount pins
 * the old file forever (https://kubernetes.io/docs/concepts/configuration/secret/#using-secrets-as-files-from-a-pod):
 * so whole volumes are mounted, never subPath, and the sidecar's file watcher sees rotations.
 */
import type { ParsedPod, PodRequest } from './pod.js';
import {
  ADMIN_PORT,
  PROXY_PORT,
  ROUTES_FILE_NAME,
  ROUTES_VOLUME_NAME,
  SECRET_VOLUME_PREFIX,
  SIDECAR_CONTAINER_NAME,
  type InjectSettings,
} from './settings.js';

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

/** The sidecar container; port names the app already uses are left off, with a warning pushed to `warnings`. */
export function buildContainer(pod: ParsedPod, req: PodRequest, settings: InjectSettings, warnings: string[]): object {
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

/** The volumes the sidecar's mounts name: the routes ConfigMap, then each Secret in annotation order. */
export function buildVolumes(req: PodRequest): object[] {
  return [
    // The whole ConfigMap, not a subPath: the sidecar hot-reloads routes.yaml on the kubelet's `..data` swap, and the
    // ConfigMap may carry other non-secret files routes.yaml refers to (a vendor CA bundle, say).
    { name: ROUTES_VOLUME_NAME, configMap: { name: req.routesConfigMap } },
    ...req.secrets.map((secretName, i) => ({ name: `${SECRET_VOLUME_PREFIX}${i}`, secret: { secretName } })),
  ];
}
