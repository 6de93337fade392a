/**
 * The client-credentials grant (RFC 6749 §4.4) over undici. One Agent per distinct TLS setup, so mTLS to a token
 * endpoint and plain TLS never share connections.
 */
import { Agent, request, type Dispatcher } from 'undici';
import type { OAuth2Auth, TlsMaterial } from '../config/types.js';
import type { Token } from '../core/token.js';
import { TokenEndpointError } from '../core/errors.js';
import { formEncode, sentForms } from './redact.js';
import { parseTokenResponse } from './response.js';

const MAX_BODY_BYTES = 256 * 1024;

export interface TokenFetcher {
  fetchToken(routeName: string, auth: OAuth2Auth): Promise<Token>;
}

export interface TokenRequest {
  headers: Record<string, string>;
  body: string;
  /** Every spelling of a credential this request carries: redacted from anything the answer brings back. */
  sent: string[];
}

export function buildTokenRequest(auth: OAuth2Auth): TokenRequest {
  const form = new URLSearchParams();
  form.set('grant_type', 'client_credentials');
  if (auth.scopes.length > 0) form.set('scope', auth.scopes.join(' '));
  if (auth.audience !== undefined) form.set('audience', auth.audience);
  if (auth.resource !== undefined) form.set('resource', auth.resource.href);
  for (const [k, v] of Object.entries(auth.params)) form.set(k, v);
  const headers: Record<string, string> = {
    'content-type': 'application/x-www-form-urlencoded',
    accept: 'application/json',
  };
  const secret = auth.clientSecret.reveal();
  if (auth.clientAuth === 'client_secret_basic') {
    const basic = `${formEncode(auth.clientId)}:${formEncode(secret)}`;
    headers['authorization'] = `Basic ${Buffer.from(basic).toString('base64')}`;
    return { headers, body: form.toString(), sent: sentForms(secret, [basic, `${auth.clientId}:${secret}`]) };
  }
  form.set('client_id', auth.clientId);
  form.set('client_secret', secret);
  return { headers, body: form.toString(), sent: sentForms(secret) };
}

export class OAuthClient implements TokenFetcher {
  readonly #agents = new Map<string, Agent>();
  readonly #defaultAgent = new Agent({ keepAliveTimeout: 30_000, connect: { timeout: 5_000 } });

  constructor(private readonly now: () => number = Date.now) {}

  async fetchToken(routeName: string, auth: OAuth2Auth): Promise<Token> {
    const { headers, body, sent } = buildTokenRequest(auth);
    const requestedAtMs = this.now();
    let status: number;
    let text: string;
    let contentType: string | undefined;
    let retryAfter: string | undefined;
    try {
      const res = await request(auth.tokenUrl, {
        method: 'POST',
        headers,
        body,
        dispatcher: this.#agentFor(auth.tls),
        signal: AbortSignal.timeout(auth.timeoutMs),
        headersTimeout: auth.timeoutMs,
        bodyTimeout: auth.timeoutMs,
      });
      status = res.statusCode;
      contentType = headerText(res.headers['content-type']);
      retryAfter = headerText(res.headers['retry-after']);
      text = await readLimited(res.body, MAX_BODY_BYTES);
    } catch (err) {
      throw new TokenEndpointError('unavailable', `token endpoint ${describeNetworkError(err, auth.timeoutMs)}`, {
        route: routeName,
        cause: err,
      });
    }
    return parseTokenResponse(
      { status, contentType, retryAfter, body: text },
      {
        route: routeName,
        requestedAtMs,
        nowMs: this.now(),
        defaultExpiresInMs: auth.defaultExpiresInMs,
        maxLifetimeMs: auth.maxLifetimeMs,
        redact: sent,
      },
    );
  }

  /** At shutdown: a token request still running is abandoned, never waited for (it could hold the exit for `timeout`). */
  async close(): Promise<void> {
    await Promise.all([this.#defaultAgent, ...this.#agents.values()].map((a) => a.destroy()));
  }

  #agentFor(tls: TlsMaterial | undefined): Dispatcher {
    if (!tls) return this.#defaultAgent;
    const key = JSON.stringify([tls.ca, tls.cert, tls.key?.reveal(), tls.servername]);
    let agent = this.#agents.get(key);
    if (!agent) {
      agent = new Agent({
        keepAliveTimeout: 30_000,
        connect: { timeout: 5_000, ca: tls.ca, cert: tls.cert, key: tls.key?.reveal(), servername: tls.servername },
      });
      this.#agents.set(key, agent);
    }
    return agent;
  }
}

function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

async function readLimited(body: AsyncIterable<Buffer>, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > limit) throw new Error(`answer larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function describeNetworkError(err: unknown, timeoutMs: number): string {
  const e = err as { name?: string; code?: string; message?: string };
  if (e.name === 'TimeoutError' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT') {
    return `did not answer within ${timeoutMs} ms`;
  }
  if (e.code === 'UND_ERR_CONNECT_TIMEOUT') return 'could not be connected to in time';
  if (e.code) return `unreachable (${e.code})`;
  return `failed (${e.message ?? 'unknown error'})`;
}
