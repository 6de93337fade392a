// A scriptable OAuth2 token endpoint (client-credentials only) for the demo and the tests.
import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { listenLocal, readBody, sendJson, sleep, type TlsFiles } from './local-server.js';

/** Pass as `expiresIn` to leave `expires_in` out of the token response. */
export const OMIT = 'omit' as const;

export type IdpBehavior =
  | {
      kind: 'token';
      /** Raw JSON value sent as expires_in (any type, for robustness tests); OMIT leaves it out. */
      expiresIn?: unknown;
      /** Issue an unsigned JWT-shaped token whose payload exp is now + expInS. */
      jwt?: { expInS: number };
      tokenType?: string;
      scope?: string;
      delayMs?: number;
    }
  | { kind: 'oauthError'; status: number; error: string; description?: string; delayMs?: number }
  | { kind: 'status'; status: number; body?: string; contentType?: string; retryAfter?: string; delayMs?: number }
  /** A careless endpoint: refuses, and quotes what it received (the Authorization header and the form) in its text. */
  | { kind: 'echo'; status: number; error: string; delayMs?: number }
  | { kind: 'hang' }
  | { kind: 'drop'; delayMs?: number };

export interface IdpRequest {
  atMs: number;
  headers: IncomingHttpHeaders;
  form: Record<string, string>;
  clientAuth: 'basic' | 'post' | 'none';
}

export interface FakeIdp {
  /** Full token URL, e.g. http://127.0.0.1:PORT/oauth/token */
  readonly url: string;
  readonly port: number;
  /** POSTs to /oauth/token, failed ones included. */
  readonly calls: number;
  readonly requests: IdpRequest[];
  /** Every access token handed out, in order. */
  readonly issued: string[];
  lastToken(): string | undefined;
  /** Default behaviour for every call (initially `{ kind: 'token' }`). */
  setBehavior(b: IdpBehavior): void;
  /** One-shot behaviours, consumed in order (one per call) before the default applies. */
  enqueue(...b: IdpBehavior[]): void;
  /** Delay before every answer unless the behaviour has its own delayMs. */
  setDelay(ms: number): void;
  /** Issued here, not expired, not revoked. */
  isValid(token: string): boolean;
  revoke(token: string): void;
  revokeAll(): void;
  close(): Promise<void>;
}

export const TOKEN_PATH = '/oauth/token';

export async function startFakeIdp(
  opts: { clients?: Record<string, string>; tls?: TlsFiles; defaultExpiresInS?: number } = {},
): Promise<FakeIdp> {
  // A Map, so ids like "constructor" or "__proto__" cannot hit Object.prototype.
  const clients = new Map(Object.entries(opts.clients ?? { 'demo-client': 'demo-secret' }));
  const defaultExpiresInS = opts.defaultExpiresInS ?? 3600;
  const requests: IdpRequest[] = [];
  const issued: string[] = [];
  const expiresAtMs = new Map<string, number>(); // live tokens only: revoking deletes
  const queue: IdpBehavior[] = [];
  let behavior: IdpBehavior = { kind: 'token' };
  let globalDelayMs = 0;
  let origin = '';

  const handle = async (req: IncomingMessage, res: ServerResponse, signal: AbortSignal): Promise<void> => {
    const body = await readBody(req);
    if (req.method !== 'POST' || req.url?.split('?')[0] !== TOKEN_PATH) {
      sendJson(res, 404, { error: 'not_found' });
      return;
    }
    const form = Object.fromEntries(new URLSearchParams(body.toString('utf8')));
    const basic = /^basic\s+(\S*)\s*$/i.exec(req.headers.authorization ?? '');
    const clientAuth = basic ? 'basic' : form.client_id !== undefined ? 'post' : 'none';
    requests.push({ atMs: Date.now(), headers: req.headers, form, clientAuth });

    const b = queue.shift() ?? behavior;
    if (b.kind === 'hang') return; // close() destroys the socket
    await sleep(b.delayMs ?? globalDelayMs, signal);
    switch (b.kind) {
      case 'drop':
        req.socket.destroy();
        return;
      case 'status':
        res.writeHead(b.status, {
          'content-type': b.contentType ?? 'text/plain',
          ...(b.retryAfter !== undefined && { 'retry-after': b.retryAfter }),
        });
        res.end(b.body ?? '');
        return;
      case 'oauthError':
        sendJson(res, b.status, { error: b.error, ...(b.description !== undefined && { error_description: b.description }) });
        return;
      case 'echo':
        sendJson(res, b.status, { error: b.error, error_description: `got authorization=${req.headers.authorization ?? ''} body=${body.toString('utf8')}` });
        return;
      case 'token':
        break;
    }

    if (!/^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '')) {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'expected a form-urlencoded body' });
      return;
    }
    if (form.grant_type !== 'client_credentials') {
      sendJson(res, 400, { error: 'unsupported_grant_type' });
      return;
    }
    const creds = basic ? decodeBasic(basic[1] ?? '') : { id: form.client_id, secret: form.client_secret };
    if (creds?.id === undefined || !clients.has(creds.id) || clients.get(creds.id) !== creds.secret) {
      sendJson(res, 401, { error: 'invalid_client' }, { 'www-authenticate': 'Basic' });
      return;
    }

    const nowMs = Date.now();
    const expiresIn = b.expiresIn === undefined ? defaultExpiresInS : b.expiresIn;
    const jwtExpS = b.jwt && Math.floor(nowMs / 1000) + b.jwt.expInS;
    const token = jwtExpS === undefined ? `tsk_${randomBytes(18).toString('base64url')}` : makeJwt(origin, creds.id, jwtExpS);
    // The token's real lifetime: a JWT's own exp, else a positive expires_in, else 1 h.
    const positive = typeof expiresIn === 'number' && Number.isFinite(expiresIn) && expiresIn > 0;
    expiresAtMs.set(token, jwtExpS !== undefined ? jwtExpS * 1000 : nowMs + (positive ? expiresIn : 3600) * 1000);
    issued.push(token);
    const scope = b.scope ?? form.scope;
    sendJson(
      res,
      200,
      {
        access_token: token,
        // A request with a DPoP proof gets a DPoP-bound token (RFC 9449 §5); the proof itself is not checked here.
        token_type: b.tokenType ?? (req.headers['dpop'] ? 'DPoP' : 'Bearer'),
        ...(expiresIn !== OMIT && { expires_in: expiresIn }),
        ...(scope !== undefined && { scope }),
      },
      { 'cache-control': 'no-store', pragma: 'no-cache' }, // RFC 6749 §5.1
    );
  };

  const server = await listenLocal(handle, opts.tls);
  origin = server.origin;
  return {
    url: origin + TOKEN_PATH,
    port: server.port,
    get calls() {
      return requests.length;
    },
    requests,
    issued,
    lastToken: () => issued.at(-1),
    setBehavior: (b) => {
      behavior = b;
    },
    enqueue: (...b) => {
      queue.push(...b);
    },
    setDelay: (ms) => {
      globalDelayMs = ms;
    },
    isValid: (token) => (expiresAtMs.get(token) ?? 0) > Date.now(),
    revoke: (token) => {
      expiresAtMs.delete(token);
    },
    revokeAll: () => expiresAtMs.clear(),
    close: () => server.close(),
  };
}

/** RFC 6749 §2.3.1: base64(urlencode(id) ":" urlencode(secret)), form encoding ('+' is a space). */
function decodeBasic(b64: string): { id: string; secret: string } | undefined {
  const decoded = Buffer.from(b64, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  const unescape = (s: string): string => decodeURIComponent(s.replace(/\+/g, ' '));
  try {
    return { id: unescape(decoded.slice(0, colon)), secret: unescape(decoded.slice(colon + 1)) };
  } catch {
    return undefined; // malformed %-escape
  }
}

/** JWT-shaped but unsigned ("alg":"none", signature "x"): only its exp matters to the sidecar. */
function makeJwt(issuer: string, subject: string, exp: number): string {
  const part = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  const payload = { iss: issuer, sub: subject, iat: Math.floor(Date.now() / 1000), exp, jti: randomBytes(12).toString('base64url') };
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(payload)}.x`;
}
