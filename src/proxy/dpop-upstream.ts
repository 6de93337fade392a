/**
 * DPoP towards the vendor (RFC 9449 §7): a fresh proof on every request that carries a DPoP-bound token, with `ath`
 * and the vendor's newest nonce, and the nonce challenge (§9) recognised so the exchange can retry once.
 */
import type { Route } from '../config/types.js';
import type { Token } from '../core/token.js';
import { accessTokenHash, asksForNonce, dpopProof, NonceBook } from '../oauth/dpop.js';

export class UpstreamDpop {
  readonly #nonces = new NonceBook();
  /** `ath` per token: the same token goes with many proofs. */
  readonly #ath = new WeakMap<Token, string>();

  constructor(private readonly nowMs: () => number = Date.now) {}

  /** `['dpop', proof]` for a request with `token`, or undefined when the token is not DPoP-bound. */
  proofHeader(route: Route, token: Token | undefined, method: string, path: string): [string, string] | undefined {
    if (token?.tokenType !== 'DPoP' || route.auth.type !== 'oauth2' || !route.auth.dpop) return undefined;
    let ath = this.#ath.get(token);
    if (ath === undefined) {
      ath = accessTokenHash(token.value.reveal());
      this.#ath.set(token, ath);
    }
    const proof = dpopProof(route.auth.dpop.key, { method, url: route.upstreamOrigin + path, nowMs: this.nowMs(), nonce: this.#nonces.get(route.upstreamOrigin), ath });
    return ['dpop', proof];
  }

  /**
   * Note the `DPoP-Nonce` of a vendor answer (raw header pairs); true when this is a 401 asking for a nonce that we
   * now have: a retry with a new proof may succeed.
   */
  answered(route: Route, statusCode: number, rawHeaders: readonly string[]): boolean {
    let nonce: string | undefined;
    let challenge: string | undefined;
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      const name = (rawHeaders[i] as string).toLowerCase();
      if (name === 'dpop-nonce') nonce = rawHeaders[i + 1];
      else if (name === 'www-authenticate') challenge = challenge === undefined ? rawHeaders[i + 1] : `${challenge}, ${rawHeaders[i + 1]}`;
    }
    const fresh = this.#nonces.note(route.upstreamOrigin, nonce);
    return statusCode === 401 && asksForNonce(challenge) && (fresh || nonce !== undefined);
  }
}
