/**
 * The refresh token of a `refresh_token` grant, kept so the fleet never forks it. A vendor that rotates refresh
 * tokens (RFC 9700 §4.14.2) answers a reused one with `invalid_grant` and may revoke the whole grant; so the newest
 * one lives in the shared store (sealed like a token), and only the lock holder reads and replaces it, just before
 * and just after its token request. This pod also keeps the newest it saw, for when the store cannot answer.
 */
import type { OAuth2Auth } from '../config/types.js';
import { TokenEndpointError, type StoreOutage } from '../core/errors.js';
import type { GrantInput } from '../oauth/client.js';
import type { TokenStore } from '../store/store.js';

/** Kept well past any access token; a refresh token unused this long is the vendor's to expire. */
const REFRESH_TOKEN_TTL_MS = 30 * 86_400_000;

export class RefreshChain {
  /**
   * The newest refresh token this pod knows, with the seed it grew from (a new seed in the config starts over), and
   * whether the store has it: one rotated while the store could not take it is newer than what the store holds.
   */
  #newest: { seed: string; value: string; saved: boolean } | undefined;

  constructor(
    private readonly store: TokenStore,
    private readonly outage: (outage: StoreOutage) => void,
  ) {}

  /**
   * The grant input for the next request: the fleet's newest refresh token, and where the rotated one goes. Throws
   * (TOKEN_UNAVAILABLE) rather than send the first refresh token when the store holds a newer one this pod cannot
   * read: a vendor that rotates takes an old one as a replay and may revoke the grant for the whole fleet.
   */
  async input(route: string, auth: OAuth2Auth): Promise<{ grant: GrantInput; saved: () => Promise<void> }> {
    const seed = auth.refreshToken?.reveal() ?? '';
    const key = auth.refreshChainKey ?? '';
    const read = await this.store.getGrantState(key);
    if (!read.ok) this.outage(read.outage);
    const shared = read.ok ? read.value : { value: undefined, unreadable: false };
    const mine = this.#newest?.seed === seed ? this.#newest : undefined;
    const local = mine?.value;
    if (shared.unreadable && local === undefined) {
      throw new TokenEndpointError(
        'unavailable',
        'the fleet\'s newest refresh token is in the store but cannot be read here (sealed with an encryption key this pod lacks, or written before store.encryption was on); the first refresh token is not sent again: roll the key out, or put a new refresh token in auth.refreshToken',
        { route },
      );
    }
    // Ours first when the store never got it (an outage): the store's is then the one we already used.
    const refreshToken = (mine && !mine.saved ? local : undefined) ?? shared.value ?? local ?? seed;
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
        const value = rotated ?? (mine && !mine.saved && mine.value === refreshToken ? refreshToken : undefined);
        if (value === undefined) return;
        this.#newest = { seed, value, saved: false };
        const put = await this.store.putGrantState(key, value, REFRESH_TOKEN_TTL_MS);
        if (put.ok) this.#newest = { seed, value, saved: true };
        else this.outage(put.outage);
      },
    };
  }
}
