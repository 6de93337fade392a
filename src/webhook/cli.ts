/**
 * `token-sidecar webhook [flags]`: run the mutating admission webhook until SIGTERM/SIGINT.
 * Every flag has an environment fallback so the Deployment can use either. Exit codes follow the CLI contract:
 * 0 after a clean shutdown, 1 for bad flags, 2 when the server cannot start (certificate unreadable, port taken).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { createLogger, type Logger } from '../log.js';
import { parseInjectSettings, type InjectSettings, type InjectSettingsInput } from './settings.js';
import { startWebhookServer } from './server.js';

export const WEBHOOK_USAGE = `Usage: token-sidecar webhook [flags]

Run the Kubernetes mutating admission webhook that injects the token-sidecar into pods annotated
token-sidecar.io/inject: "true". Serves POST /mutate (AdmissionReview admission.k8s.io/v1) and GET /healthz over HTTPS.

Flags (environment fallback in brackets):
  --listen HOST:PORT           address to serve on [TOKEN_SIDECAR_WEBHOOK_LISTEN] (default 0.0.0.0:8443)
  --tls-cert FILE              PEM certificate, re-read when it changes [TOKEN_SIDECAR_WEBHOOK_TLS_CERT]
                               (default /etc/token-sidecar-webhook/tls/tls.crt)
  --tls-key FILE               PEM private key [TOKEN_SIDECAR_WEBHOOK_TLS_KEY]
                               (default /etc/token-sidecar-webhook/tls/tls.key)
  --image IMAGE                sidecar image to inject (required) [TOKEN_SIDECAR_IMAGE]
  --image-pull-policy POLICY   Always | IfNotPresent | Never [TOKEN_SIDECAR_IMAGE_PULL_POLICY] (default IfNotPresent)
  --native-sidecar BOOL        inject as a native sidecar (Kubernetes >= 1.29) unless a pod opts out
                               [TOKEN_SIDECAR_NATIVE_SIDECAR] (default true)
  --allow-image-override       honour the token-sidecar.io/image annotation [TOKEN_SIDECAR_ALLOW_IMAGE_OVERRIDE]
  --cpu-request Q              default sidecar CPU request [TOKEN_SIDECAR_CPU_REQUEST] (default 50m)
  --memory-request Q           default sidecar memory request [TOKEN_SIDECAR_MEMORY_REQUEST] (default 96Mi)
  --cpu-limit Q                default sidecar CPU limit [TOKEN_SIDECAR_CPU_LIMIT] (default none)
  --memory-limit Q             default sidecar memory limit [TOKEN_SIDECAR_MEMORY_LIMIT] (default 256Mi)
  --drain-timeout DURATION     the longest drainTimeout of your routes.yaml files; pods get a termination grace
                               period that fits it [TOKEN_SIDECAR_WEBHOOK_DRAIN_TIMEOUT] (default 10s)
  --log-level LEVEL            trace | debug | info | warn | error [LOG_LEVEL] (default info)
  -h, --help                   show this help
`;

const DEFAULT_CERT = '/etc/token-sidecar-webhook/tls/tls.crt';
const DEFAULT_KEY = '/etc/token-sidecar-webhook/tls/tls.key';

class UsageError extends Error {}

export interface WebhookCommandOptions {
  env?: NodeJS.ProcessEnv;
  /** Stops the server like SIGTERM does (tests). */
  signal?: AbortSignal;
  logger?: Logger;
  onListening?: (port: number) => void;
}

/** `host:port` or `[v6]:port`. */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || host === undefined || !Number.isInteger(port) || port > 65535) {
    throw new UsageError(`--listen: ${JSON.stringify(text)} is not HOST:PORT (e.g. 0.0.0.0:8443)`);
  }
  return { host, port };
}

function parseBool(name: string, text: string | undefined): boolean | undefined {
  if (text === undefined || text === '') return undefined;
  if (text === 'true' || text === 'false') return text === 'true';
  throw new UsageError(`${name}: expected true or false, got ${JSON.stringify(text)}`);
}

/** `10`, `10s`, `2m` -> whole seconds. */
function parseSeconds(name: string, text: string | undefined): number | undefined {
  if (text === undefined || text === '') return undefined;
  const m = /^(\d+)(s|m)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${name}: expected a duration in seconds or minutes (10s, 2m), got ${JSON.stringify(text)}`);
  return Number(m[1]) * (m[2] === 'm' ? 60 : 1);
}

const FLAGS = {
  listen: { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  image: { type: 'string' },
  'image-pull-policy': { type: 'string' },
  'native-sidecar': { type: 'string' },
  'allow-image-override': { type: 'boolean' },
  'cpu-request': { type: 'string' },
  'memory-request': { type: 'string' },
  'cpu-limit': { type: 'string' },
  'memory-limit': { type: 'string' },
  'drain-timeout': { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

function parseFlags(argv: string[]) {
  return parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false }).values;
}

export async function webhookCommand(argv: string[], options: WebhookCommandOptions = {}): Promise<number> {
  const env = options.env ?? process.env;
  let values: ReturnType<typeof parseFlags>;
  try {
    values = parseFlags(argv);
  } catch (err) {
    process.stderr.write(`token-sidecar webhook: ${err instanceof Error ? err.message : String(err)}\n\n${WEBHOOK_USAGE}`);
    return 1;
  }
  if (values.help) {
    process.stdout.write(WEBHOOK_USAGE);
    return 0;
  }

  let listen: { host: string; port: number };
  let settings: InjectSettings;
  let logger: Logger;
  try {
    listen = parseListen(values.listen ?? env.TOKEN_SIDECAR_WEBHOOK_LISTEN ?? '0.0.0.0:8443');
    const image = values.image ?? env.TOKEN_SIDECAR_IMAGE;
    if (image === undefined || image === '') {
      throw new UsageError('--image (or TOKEN_SIDECAR_IMAGE) is required: the sidecar image to inject');
    }
    const resources: NonNullable<InjectSettingsInput['resources']> = {};
    const cpuRequest = values['cpu-request'] ?? env.TOKEN_SIDECAR_CPU_REQUEST;
    const memoryRequest = values['memory-request'] ?? env.TOKEN_SIDECAR_MEMORY_REQUEST;
    const cpuLimit = values['cpu-limit'] ?? env.TOKEN_SIDECAR_CPU_LIMIT;
    const memoryLimit = values['memory-limit'] ?? env.TOKEN_SIDECAR_MEMORY_LIMIT;
    if (cpuRequest) resources.cpuRequest = cpuRequest;
    if (memoryRequest) resources.memoryRequest = memoryRequest;
    if (cpuLimit) resources.cpuLimit = cpuLimit;
    if (memoryLimit) resources.memoryLimit = memoryLimit;
    const input: InjectSettingsInput = { image, resources };
    const pullPolicy = values['image-pull-policy'] ?? env.TOKEN_SIDECAR_IMAGE_PULL_POLICY;
    // Checked by the settings schema, which names the allowed values.
    if (pullPolicy) input.imagePullPolicy = pullPolicy as InjectSettingsInput['imagePullPolicy'];
    const native = parseBool('--native-sidecar', values['native-sidecar'] ?? env.TOKEN_SIDECAR_NATIVE_SIDECAR);
    if (native !== undefined) input.nativeSidecar = native;
    const allowOverride =
      values['allow-image-override'] ?? parseBool('TOKEN_SIDECAR_ALLOW_IMAGE_OVERRIDE', env.TOKEN_SIDECAR_ALLOW_IMAGE_OVERRIDE);
    if (allowOverride !== undefined) input.allowImageOverride = allowOverride;
    const drain = parseSeconds('--drain-timeout', values['drain-timeout'] ?? env.TOKEN_SIDECAR_WEBHOOK_DRAIN_TIMEOUT);
    if (drain !== undefined) input.drainTimeoutSeconds = drain;
    try {
      settings = parseInjectSettings(input);
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err));
    }
    const level = values['log-level'] ?? env.LOG_LEVEL ?? 'info';
    if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(level)) {
      throw new UsageError(`--log-level: unknown level ${JSON.stringify(level)}`);
    }
    logger = options.logger ?? createLogger({ level }).child({ component: 'webhook' });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`token-sidecar webhook: ${err.message}\n`);
    return 1;
  }

  let server;
  try {
    server = await startWebhookServer({
      ...listen,
      certFile: values['tls-cert'] ?? env.TOKEN_SIDECAR_WEBHOOK_TLS_CERT ?? DEFAULT_CERT,
      keyFile: values['tls-key'] ?? env.TOKEN_SIDECAR_WEBHOOK_TLS_KEY ?? DEFAULT_KEY,
      settings,
      logger,
    });
  } catch (err) {
    logger.fatal({ event: 'webhook.start_failed', err: err instanceof Error ? err.message : String(err) }, 'webhook could not start');
    return 2;
  }
  options.onListening?.(server.port);

  const stopSignal = await new Promise<string>((resolve) => {
    const onSignal = (name: string) => (): void => finish(name);
    const onTerm = onSignal('SIGTERM');
    const onInt = onSignal('SIGINT');
    const onAbort = onSignal('abort');
    function finish(name: string): void {
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      options.signal?.removeEventListener('abort', onAbort);
      resolve(name);
    }
    process.once('SIGTERM', onTerm);
    process.once('SIGINT', onInt);
    if (options.signal?.aborted) finish('abort');
    else options.signal?.addEventListener('abort', onAbort, { once: true });
  });
  logger.info({ event: 'webhook.stopping', signal: stopSignal }, 'webhook stopping');
  await server.close();
  logger.info({ event: 'webhook.stopped' }, 'webhook stopped');
  return 0;
}
