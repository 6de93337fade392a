/**
 * The HTTPS envelope of the mutating admission webhook: AdmissionReview `admission.k8s.io/v1` in, AdmissionReview
 * out (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#request).
 * The decision itself is the pure `injectPod` (inject.ts); `admissionResponse` below is the pure mapping between the
 * two, and the rest of this file is sockets, TLS and limits.
 *
 * Rules kept here:
 * - Never crash, never hang: every request ends in a response; a malformed review is a 400 with a sentence saying
 *   what is wrong, an oversized body a 413, a bug a 500. The API server then applies the webhook's failurePolicy.
 * - Every answer that is not an AdmissionReview is a SidecarError sent by `sendError` (http/problem.ts): problem+json
 *   with the status from the one code table, like the proxy's and the admin API's own errors.
 * - The certificate is re-read when its files change (cert-manager renews it and the kubelet swaps the Secret volume),
 *   without a restart.
 */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { createLogger, type Logger } from '../log.js';
import { z } from 'zod';
import { SidecarError, isSidecarError, toSidecarError } from '../core/errors.js';
import { sendError } from '../http/problem.js';
import { injectPod, type InjectResult } from './inject.js';
import type { InjectSettings } from './settings.js';

/** AdmissionReviews carry one object; real Pods are a few KiB. The API server itself caps requests at 3 MiB. */
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
/** How often the certificate files are compared with what is being served. */
export const DEFAULT_CERT_RELOAD_INTERVAL_MS = 10_000;
/** On close, in-flight reviews get this long before their connections are cut. */
const CLOSE_GRACE_MS = 5_000;

const ADMISSION_API_VERSION = 'admission.k8s.io/v1';

const reviewSchema = z.object({
  apiVersion: z.literal(ADMISSION_API_VERSION, {
    error: `apiVersion must be ${ADMISSION_API_VERSION} (set admissionReviewVersions: ["v1"] on the webhook)`,
  }),
  kind: z.literal('AdmissionReview', { error: 'kind must be AdmissionReview' }),
  request: z.looseObject({
    uid: z.string({ error: 'request.uid is required' }).min(1, 'request.uid is required'),
    kind: z.looseObject({ group: z.string(), version: z.string(), kind: z.string() }).optional(),
    operation: z.string().optional(),
    namespace: z.string().optional(),
    name: z.string().optional(),
    object: z.unknown(),
    dryRun: z.boolean().optional(),
  }),
});
export type AdmissionReview = z.infer<typeof reviewSchema>;

export interface AdmissionResponseBody {
  apiVersion: typeof ADMISSION_API_VERSION;
  kind: 'AdmissionReview';
  response: {
    uid: string;
    allowed: boolean;
    patchType?: 'JSONPatch';
    /** base64 of the JSON Patch, as the API requires. */
    patch?: string;
    warnings?: string[];
    status?: { code: number; message: string };
  };
}

/** What `admissionResponse` decided: `ignored` is a review that is not a Pod CREATE. */
export type AdmissionDecision = InjectResult | { outcome: 'ignored'; why: string; warnings: string[] };

export type AdmissionOutcome =
  | { ok: true; body: AdmissionResponseBody; result: AdmissionDecision; review: AdmissionReview }
  /** Not a usable review: a BAD_REQUEST saying what is wrong with it. */
  | { ok: false; error: SidecarError };

/**
 * Pure: a decoded JSON body -> the AdmissionReview to answer, or why the body is not a usable review.
 * Anything that is not a Pod CREATE is allowed untouched (the webhook's rules should not send it, but a
 * misconfigured rule must not block other resources).
 */
export function admissionResponse(body: unknown, settings: InjectSettings): AdmissionOutcome {
  const parsed = reviewSchema.safeParse(body);
  if (!parsed.success) {
    const details = parsed.error.issues
      .map((i) => {
        const path = i.path.join('.');
        return path !== '' && !i.message.includes(path) ? `${path}: ${i.message}` : i.message;
      })
      .join('; ');
    return { ok: false, error: new SidecarError('BAD_REQUEST', `malformed AdmissionReview: ${details}`) };
  }
  const review = parsed.data;
  const { uid } = review.request;
  const envelope = (response: Omit<AdmissionResponseBody['response'], 'uid'>): AdmissionResponseBody => ({
    apiVersion: ADMISSION_API_VERSION,
    kind: 'AdmissionReview',
    response: { uid, ...response },
  });

  const kind = review.request.kind;
  const isPod = kind === undefined || (kind.group === '' && kind.kind === 'Pod');
  const operation = review.request.operation ?? 'CREATE';
  if (!isPod || operation !== 'CREATE') {
    const why = `not a Pod CREATE (${kind?.kind ?? '?'} ${operation})`;
    return { ok: true, review, body: envelope({ allowed: true }), result: { outcome: 'ignored', why, warnings: [] } };
  }

  const result = injectPod({ pod: review.request.object, namespace: review.request.namespace ?? '', settings });
  const warnings = result.warnings.length > 0 ? { warnings: result.warnings } : {};
  switch (result.outcome) {
    case 'injected':
      return {
        ok: true,
        review,
        result,
        body: envelope({
          allowed: true,
          patchType: 'JSONPatch',
          patch: Buffer.from(JSON.stringify(result.patch)).toString('base64'),
          ...warnings,
        }),
      };
    case 'skipped':
      return { ok: true, review, result, body: envelope({ allowed: true, ...warnings }) };
    case 'denied':
      return {
        ok: true,
        review,
        result,
        body: envelope({ allowed: false, status: { code: 400, message: result.denied }, ...warnings }),
      };
  }
}

export interface WebhookServerOptions {
  host: string;
  /** 0 picks a free port; the chosen one is returned. */
  port: number;
  certFile: string;
  keyFile: string;
  settings: InjectSettings;
  logger?: Logger;
  maxBodyBytes?: number;
  certReloadIntervalMs?: number;
}

export interface WebhookServer {
  port: number;
  /** Stop accepting, let in-flight reviews finish (bounded), stop watching the certificate. */
  close(): Promise<void>;
}

interface TlsPair {
  cert: Buffer;
  key: Buffer;
}

async function readTlsPair(certFile: string, keyFile: string): Promise<TlsPair> {
  const [cert, key] = await Promise.all([readFile(certFile), readFile(keyFile)]);
  // Throws on a malformed file or a key that does not match the certificate (e.g. read mid-rotation).
  createSecureContext({ cert, key });
  return { cert, key };
}

function certificateFacts(cert: Buffer): { subject?: string; validTo?: string } {
  try {
    const x509 = new X509Certificate(cert);
    return { subject: x509.subject, validTo: x509.validTo };
  } catch {
    return {};
  }
}

/** The whole body; rejects with PAYLOAD_TOO_LARGE past `maxBytes`, or with the stream's own error. */
function readBody(req: IncomingMessage, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const tooLarge = (): SidecarError => new SidecarError('PAYLOAD_TOO_LARGE', `request body exceeds ${maxBytes} bytes`);
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > maxBytes) {
      reject(tooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > maxBytes) {
        req.off('data', onData);
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks, size)));
    req.once('error', reject);
  });
}

/** A 200: the AdmissionReview (JSON) or the health check's `ok` (text). Errors go through `sendError`. */
function sendOk(res: ServerResponse, body: AdmissionResponseBody | string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = typeof body === 'string' ? `${body}\n` : JSON.stringify(body);
  res.writeHead(200, {
    'content-type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

/** Start the webhook's HTTPS server. Rejects if the certificate cannot be read or the port cannot be bound. */
export async function startWebhookServer(opts: WebhookServerOptions): Promise<WebhookServer> {
  const log = opts.logger ?? createLogger().child({ component: 'webhook' });
  const maxBodyBytes = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  let tls = await readTlsPair(opts.certFile, opts.keyFile);
  log.info({ event: 'tls.loaded', ...certificateFacts(tls.cert) }, 'webhook certificate loaded');

  const handleMutate = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let raw: Buffer;
    try {
      raw = await readBody(req, maxBodyBytes);
    } catch (err) {
      if (isSidecarError(err)) {
        // Drain what the client is still sending (so it reads our answer instead of a reset), then close.
        req.resume();
        sendError(res, err, { connection: 'close' });
        log.warn({ event: 'review.too_large', maxBodyBytes }, 'AdmissionReview too large');
      } else {
        res.destroy();
      }
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      const message = `malformed AdmissionReview: body is not JSON (${err instanceof Error ? err.message : String(err)})`;
      sendError(res, new SidecarError('BAD_REQUEST', message));
      log.warn({ event: 'review.malformed' }, message);
      return;
    }
    const outcome = admissionResponse(body, opts.settings);
    if (!outcome.ok) {
      sendError(res, outcome.error);
      log.warn({ event: 'review.malformed' }, outcome.error.message);
      return;
    }
    sendOk(res, outcome.body);
    const { request } = outcome.review;
    const { result } = outcome;
    log.info(
      {
        event: `review.${result.outcome}`,
        uid: request.uid,
        namespace: request.namespace,
        pod: podName(request.object),
        dryRun: request.dryRun,
        ...decisionFields(result),
        ...(result.warnings.length > 0 ? { warnings: result.warnings } : {}),
      },
      'AdmissionReview answered',
    );
  };

  const server: Server = createServer({ cert: tls.cert, key: tls.key }, (req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0];
    req.on('error', (err) => log.debug({ event: 'request.error', err: err.message }, 'request stream error'));
    if (path === '/healthz') {
      if (req.method === 'GET' || req.method === 'HEAD') sendOk(res, 'ok');
      else sendError(res, new SidecarError('METHOD_NOT_ALLOWED', 'the health check is GET /healthz', { allow: 'GET, HEAD' }));
      return;
    }
    if (path !== '/mutate') {
      const detail = `no such path: ${path ?? ''} (the webhook answers POST /mutate and GET /healthz)`;
      sendError(res, new SidecarError('NOT_FOUND', detail));
      return;
    }
    if (req.method !== 'POST') {
      sendError(res, new SidecarError('METHOD_NOT_ALLOWED', 'POST an AdmissionReview to /mutate', { allow: 'POST' }));
      return;
    }
    handleMutate(req, res).catch((err: unknown) => {
      log.error({ event: 'review.error', err }, 'unexpected error answering an AdmissionReview');
      // An unknown failure becomes INTERNAL; its message stays in the log above.
      sendError(res, toSidecarError(err));
    });
  });
  // Slow or silent clients must not pin sockets: the API server sends a whole review at once, in well under a second.
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.on('tlsClientError', (err) => log.debug({ event: 'tls.client_error', err: err.message }, 'TLS handshake failed'));
  server.on('clientError', (err, socket) => {
    log.debug({ event: 'http.client_error', err: err.message }, 'bad HTTP from a client');
    socket.destroy();
  });

  // Certificate rotation: cert-manager renews the Secret, the kubelet swaps the mounted files (atomic `..data`
  // symlink), we notice on the next tick and hand the new pair to new handshakes. Comparing contents (not mtimes or
  // inotify) is what survives the symlink swap; a half-written or mismatched pair is skipped until it settles.
  let reloading = false;
  const reload = async (): Promise<void> => {
    if (reloading) return;
    reloading = true;
    try {
      const [cert, key] = await Promise.all([readFile(opts.certFile), readFile(opts.keyFile)]);
      if (cert.equals(tls.cert) && key.equals(tls.key)) return;
      const next = await readTlsPair(opts.certFile, opts.keyFile);
      server.setSecureContext({ cert: next.cert, key: next.key });
      tls = next;
      log.info({ event: 'tls.reloaded', ...certificateFacts(next.cert) }, 'webhook certificate reloaded');
    } catch (err) {
      log.warn(
        { event: 'tls.reload_failed', err: err instanceof Error ? err.message : String(err) },
        'could not reload the webhook certificate; still serving the previous one',
      );
    } finally {
      reloading = false;
    }
  };
  const timer = setInterval(() => void reload(), opts.certReloadIntervalMs ?? DEFAULT_CERT_RELOAD_INTERVAL_MS);
  timer.unref();

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      clearInterval(timer);
      reject(err);
    };
    server.once('error', onError);
    server.listen(opts.port, opts.host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (err) => log.error({ event: 'server.error', err }, 'webhook server error'));
  const port = (server.address() as AddressInfo).port;
  log.info({ event: 'webhook.listening', host: opts.host, port }, 'webhook listening');

  let closing: Promise<void> | undefined;
  return {
    port,
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        clearInterval(timer);
        const force = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
        force.unref();
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}

function decisionFields(result: AdmissionDecision): { reason: string } | { ops: number } {
  switch (result.outcome) {
    case 'ignored':
      return { reason: result.why };
    case 'skipped':
      return { reason: result.skipped };
    case 'denied':
      return { reason: result.denied };
    case 'injected':
      return { ops: result.patch.length };
  }
}

function podName(object: unknown): string | undefined {
  if (typeof object !== 'object' || object === null) return undefined;
  const metadata: unknown = (object as { metadata?: unknown }).metadata;
  if (typeof metadata !== 'object' || metadata === null) return undefined;
  const { name, generateName } = metadata as { name?: unknown; generateName?: unknown };
  if (typeof name === 'string' && name !== '') return name;
  return typeof generateName === 'string' ? `${generateName}*` : undefined;
}
