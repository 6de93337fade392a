/**
 * Token requests over undici, for every grant and client authentication (token-request.ts builds them), with a
 * DPoP proof when the route asks for one. One Agent per distinct TLS setup, so mTLS to a token endpoint (RFC 8705)
 * and plain TLS never share connections. Answers are read bounded and parsed by response.ts.
 */
import { Agent, type Dispatcher } from '../http/undici.js';
import type { OAuth2Auth, TlsMaterial } from '../config/types.js';
import type { Token } from '../core/token.js';
import { TokenEndpointError } from '../core/errors.js';
import { readFileDigest, SECRET_FILE_MAX_BYTES, unreadable } from '../config/files.js';
import { dpopProof, NonceBook } from './dpop.js';
import { parseTokenResponse, refreshTokenIn, type TokenHttpResponse } from './response.js';
import { buildTokenRequest } from './token-request.js';

const MAX_BODY_BYTES = 256 * 1024;

/** The state a grant carries from one request to the next: the newest refresh token, and where a new one goes. */
export interface GrantInput {
  refreshToken?: string | undefined;
  /** Called with the answer's `refresh_token` (RFC 6749 §6: it may rotate) before the token is returned. */
  onRefreshToken?: ((refreshToken: string) => void) | undefined;
}

export interface TokenFetcher {
  fetchToken(routeName: string, auth: OAuth2Auth, grant?: GrantInput): Promise<Token>;
}

interface Answer {
  http: TokenHttpResponse;
  requestedAtMs: number;
  sent: string[];
  dpopNonce: string | undefined;
}

export class OAuthClient implements TokenFetcher {
  readonly #agents = new Map<string, Agent>();
  readonly #defaultAgent = new Agent({ keepAliveTimeout: 30_000, connect: { timeout: 5_000 } });
  /** DPoP-Nonce per token endpoint origin. */
  readonly #nonces = new NonceBook();

  constructor(private readonly now: () => number = Date.now) {}

  async fetchToken(routeName: string, auth: OAuth2Auth, grant: GrantInput = {}): Promise<Token> {
    const subjectToken = auth.subjectToken ? await readSubjectToken(routeName, auth.subjectToken.file) : undefined;
    const origin = auth.tokenUrl.origin;
    let answer = await this.#post(routeName, auth, grant, subjectToken);
    // RFC 9449 §8: the token endpoint wants a (newer) nonce: retry once with it, with a new proof and assertion.
    if (auth.dpop && this.#nonces.note(origin, answer.dpopNonce) && answer.http.status === 400 && /"use_dpop_nonce"/.test(answer.http.body)) {
      answer = await this.#post(routeName, auth, grant, subjectToken);
      this.#nonces.note(origin, answer.dpopNonce);
    }
    // RFC 6749 §6: a refresh token in a 200 is the one to use next, even if the access token in it is refused below.
    const rotated = grant.onRefreshToken && answer.http.status === 200 ? refreshTokenIn(answer.http.body) : undefined;
    if (rotated !== undefined) grant.onRefreshToken?.(rotated);
    return parseTokenResponse(answer.http, {
      route: routeName,
      requestedAtMs: answer.requestedAtMs,
      nowMs: this.now(),
      defaultExpiresInMs: auth.defaultExpiresInMs,
      maxLifetimeMs: auth.maxLifetimeMs,
      redact: answer.sent,
      shape: auth.tokenResponse,
      dpop: auth.dpop !== undefined,
    });
  }

  async #post(routeName: string, auth: OAuth2Auth, grant: GrantInput, subjectToken: string | undefined): Promise<Answer> {
    const requestedAtMs = this.now();
    const { headers, body, sent } = buildTokenRequest(auth, { nowMs: requestedAtMs, refreshToken: grant.refreshToken, subjectToken });
    if (auth.dpop) {
      const proof = dpopProof(auth.dpop.key, { method: 'POST', url: auth.tokenUrl.href, nowMs: requestedAtMs, nonce: this.#nonces.get(auth.tokenUrl.origin) });
      headers['dpop'] = proof;
      sent.push(proof);
    }
    try {
      const res = await this.#agentFor(auth.tls).request({
        origin: auth.tokenUrl.origin,
        path: `${auth.tokenUrl.pathname}${auth.tokenUrl.search}`,
        method: 'POST',
        headers,
        body,
        signal: AbortSignal.timeout(auth.timeoutMs),
        headersTimeout: auth.timeoutMs,
        bodyTimeout: auth.timeoutMs,
      });
      const http = {
        status: res.statusCode,
        contentType: headerText(res.headers['content-type']),
        retryAfter: headerText(res.headers['retry-after']),
        body: await readLimited(res.body, MAX_BODY_BYTES),
      };
      return { http, requestedAtMs, sent, dpopNonce: headerText(res.headers['dpop-nonce']) };
    } catch (err) {
      throw new TokenEndpointError('unavailable', `token endpoint ${describeNetworkError(err, auth.timeoutMs)}`, {
        route: routeName,
        cause: err,
      });
    }
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

/** RFC 8693 subject token from a file (a projected service-account token rotates: read it fresh every time). */
async function readSubjectToken(routeName: string, file: string): Promise<string> {
  const read = await readFileDigest(file, SECRET_FILE_MAX_BYTES);
  const text = read.content?.toString('utf8').trim();
  if (!text) {
    const why = read.content === undefined ? unreadable(read.refusal, file, 'the subject token file') : `${file} is empty`;
    throw new TokenEndpointError('unavailable', `subject token: ${why}`, { route: routeName });
  }
  return text;
}
