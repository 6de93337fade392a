/**
 * The 401 story in one place. A vendor 401 means the token was refused: the token keeper retires it (fleet-wide) and
 * brings another, and the request is replayed once with it, when its body could be kept and the 401 could be held
 * back from the app. Otherwise the 401 streams to the app as it is, and the token is still retired for the next one.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Token } from '../core/token.js';
import type { Route } from '../config/types.js';
import type { TokenManager } from '../tokens/manager.js';

/** Largest 401 body held back while deciding whether to replay; past it the 401 streams to the app as is. */
export const HELD_401_MAX_BYTES = 64 * 1024;

/**
 * How the app's body travels: `none`; `buffer`, read into memory first so a replay can send the same bytes (a sized
 * body within the route's `replayBodyLimit`, on a route that replays); or `stream`, not replayable.
 */
export function bodyPlan(route: Route, headers: IncomingHttpHeaders): 'none' | 'buffer' | 'stream' {
  const lengthHeader = headers['content-length'];
  if (headers['transfer-encoding'] === undefined && (lengthHeader === undefined || lengthHeader === '0')) return 'none';
  if (!route.retryOn401 || lengthHeader === undefined || Number(lengthHeader) > route.replayBodyLimitBytes) return 'stream';
  return 'buffer';
}

/** Whether this attempt's 401 is held back for a replay: a token was injected, the body was kept, not replayed yet. */
export function holds401(route: Route, token: Token | undefined, bodyKept: boolean, replayed: boolean): boolean {
  return route.retryOn401 && token !== undefined && bodyKept && !replayed;
}

/** A held 401: complete (then replay or hand it over), or past the cap (then it streams on). */
export class Held401 {
  readonly chunks: Buffer[] = [];
  #bytes = 0;

  constructor(
    readonly statusCode: number,
    readonly headers: string[],
    /** The vendor asked for a DPoP nonce (RFC 9449 §9): retry with the same token and a new proof. */
    readonly nonceChallenge = false,
  ) {}

  /** False once the body is too large to hold: the caller hands the answer over and streams the rest. */
  add(chunk: Buffer): boolean {
    this.#bytes += chunk.length;
    this.chunks.push(chunk);
    return this.#bytes <= HELD_401_MAX_BYTES;
  }
}

export interface ReplayObserver {
  unauthorized?(route: string, replayed: boolean): void;
}

/** The vendor refused `token`: the token for the one replay, or undefined (then the 401 goes to the app). */
export async function tokenForReplay(manager: TokenManager, observer: ReplayObserver, route: Route, token: Token): Promise<Token | undefined> {
  const fresh = await manager.afterUnauthorized(route.name, token.fingerprint);
  observer.unauthorized?.(route.name, fresh !== undefined);
  return fresh;
}

/**
 * A 401 that reached the app without a replay (streamed body, too large to hold, or the replay's own answer): still
 * retire the token, so the next request gets a fresh one. The keeper's rate limit keeps a vendor that refuses
 * everything from hammering the token endpoint.
 */
export function retireAfter401(manager: TokenManager, observer: ReplayObserver, route: Route, token: Token): void {
  if (!route.retryOn401) return;
  observer.unauthorized?.(route.name, false);
  manager.afterUnauthorized(route.name, token.fingerprint).catch(() => undefined);
}
