/**
 * Keeping this pod in step with the fleet: take the tokens other pods refreshed (from their events), drop the ones
 * invalidated elsewhere, re-share ours after a store outage, and, while events are not arriving, poll the store.
 */
import { isUsable, type Token } from '../core/token.js';
import type { StoreEvent, TokenStore } from '../store/store.js';
import type { Keeper } from './keeper.js';
import { adoption } from './policy.js';
import type { Timers } from './scheduler.js';
import type { StoreTrouble } from './store-trouble.js';

/** While pub/sub is down, how often local tokens are compared with the store (a bounded fallback for lost events). */
export const RECONCILE_INTERVAL_MS = 2_000;

export interface FleetSyncDeps {
  readonly store: TokenStore;
  readonly trouble: StoreTrouble;
  readonly timers: Timers;
  readonly nowMs: () => number;
  readonly keeper: (key: string) => Keeper | undefined;
  readonly keepers: () => Iterable<Keeper>;
}

export class FleetSync {
  #timer: unknown;
  #closed = false;

  constructor(private readonly d: FleetSyncDeps) {
    d.store.onEvent((e) => this.#onEvent(e));
    this.#tick();
  }

  close(): void {
    this.#closed = true;
    this.d.timers.clearTimeout(this.#timer);
  }

  readonly #tick = (): void => {
    if (this.#closed) return;
    this.#timer = this.d.timers.setTimeout(() => {
      if (!this.d.store.eventsLive()) for (const k of this.d.keepers()) void this.adopt(k, true);
      this.#tick();
    }, RECONCILE_INTERVAL_MS);
  };

  #onEvent(event: StoreEvent): void {
    if (event.kind === 'reconnected') {
      for (const k of this.d.keepers()) void this.reseed(k);
      return;
    }
    const k = this.d.keeper(event.key);
    if (!k) return;
    if (event.kind === 'invalidated') k.drop(event.fingerprint);
    else if (k.state.token?.fingerprint !== event.fingerprint && !k.refreshing) void this.adopt(k, false, event.token);
  }

  /**
   * Take the store's token (or the one an event `carried`) if it is newer than ours (another pod refreshed). When
   * reconciling without events, a token of ours that the store had and no longer has was invalidated elsewhere.
   */
  async adopt(k: Keeper, reconciling: boolean, carried?: Token): Promise<void> {
    let shared = carried;
    if (!shared) {
      const read = await this.d.store.get(k.key);
      if (!read.ok) return this.d.trouble.report(read.outage);
      shared = read.value;
    }
    const mine = k.state.token;
    switch (adoption(k.state, shared, this.d.nowMs(), { refreshing: k.refreshing, reconciling })) {
      case 'drop-mine':
        if (mine) k.drop(mine.fingerprint);
        return;
      case 'take':
        if (shared) k.take(shared);
        return;
      case 'none':
        return;
    }
  }

  /**
   * The store is back after an outage and may have lost its data: share our token again (newer-wins keeps a fresher
   * one), or take the store's if it is newer. This is how pods rejoin without a new token request.
   */
  async reseed(k: Keeper): Promise<void> {
    const mine = k.state.token;
    const read = await this.d.store.get(k.key);
    if (!read.ok) return this.d.trouble.report(read.outage);
    const shared = read.value;
    if (!shared && mine && isUsable(mine, this.d.nowMs())) {
      const put = await this.d.store.put(k.key, mine);
      if (put.ok) k.markShared(mine.fingerprint);
      else this.d.trouble.report(put.outage);
    } else if (shared && (!mine || shared.issuedAtMs > mine.issuedAtMs)) {
      await this.adopt(k, false, shared);
    }
  }
}
