/**
 * The refresh token of a `refresh_token` grant, kept so the fleet never forks it. A vendor that rotates refresh
 * tokens (RFC 9700 §4.14.2) answers a reused one with `invalid_grant` and may revoke the whole grant; so the newest
 * one lives in the shared store (sealed like a token), and only the lock holder reads and replaces it, just before
 * and just after its token request. This pod also keeps the newest it saw, for when the store cannot answer.
 */
import type { OAuth2Auth } from '../config/types.js';
import type { StoreOutage } from '../core/errors.js';
import type { GrantInput } from '../oauth/client.js';
import type { TokenStore } from '../store/store.js';

/** Kept well past any access token; a refresh token unused this long is the vendor's to expire. */
const REFRESH_TOKEN_TTL_MS = 30 * 86_400_000;

export class RefreshChain {
  /** The newest refresh token this pod knows, with the seed it grew from (a new seed in the config starts over). */
  #newest: { seed: string; value: string } | undefined;

  constructor(
    private readonly store: TokenStore,
    private readonly key: string,
    private readonly outage: (outage: StoreOutage) => void,
  ) {}

  /** The grant input for the next request: the fleet's newest refresh token, and where the rotated one goes. */
  async input(auth: OAuth2Auth): Promise<{ grant: GrantInput; saved: () => Promise<void> }> {
    const seed = auth.refreshToken?.reveal() ?? '';
    const read = await this.store.getGrantState(this.key);
    if (!read.ok) this.outage(read.outage);
    const shared = read.ok ? read.value : undefined;
    const local = this.#newest?.seed === seed ? this.#newest.value : undefined;
    const refreshToken = shared ?? local ?? seed;
    let rotated: string | undefined;
    return {
      grant: {
        refreshToken,
        onRefreshToken: (next) => {
          if (next !== refreshToken) rotated = next;
        },
      },
      // Written before the new access token is shared and the lock let go: the next holder must find it.
      saved: async () => {
        if (rotated === undefined) return;
        this.#newest = { seed, value: rotated };
        const put = await this.store.putGrantState(this.key, rotated, REFRESH_TOKEN_TTL_MS);
        if (!put.ok) this.outage(put.outage);
      },
    };
  }
}
