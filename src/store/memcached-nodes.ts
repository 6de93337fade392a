/** One server of the memcached store: its connection, its breaker, and what is logged about it. */
import type { Logger } from '../log.js';
import { McServer } from './memcached-client.js';

export interface Node {
  readonly server: McServer;
  /** Calls to this server are skipped until then (a frozen server must not tax every request). */
  breakerOpenUntilMs: number;
  /** Was up before: coming up again is a reconnect, after which the server may have lost its data. */
  wasUp: boolean;
}

export interface NodeOptions {
  log: Logger;
  commandTimeoutMs: number;
  closed(): boolean;
  /** The server answers (again); `reconnected` when it had before. */
  up(node: Node, reconnected: boolean): void;
  down(node: Node): void;
}

export function createNode(host: string, port: number, o: NodeOptions): Node {
  let lastCause: string | undefined;
  const node: Node = {
    breakerOpenUntilMs: 0,
    wasUp: false,
    server: new McServer({
      host,
      port,
      connectTimeoutMs: 2_000,
      // Long past any deadline of ours: only a connection that stopped answering altogether is dialled again.
      staleReplyMs: Math.max(2_000, 2 * o.commandTimeoutMs),
      onUp: () => {
        const reconnected = node.wasUp;
        node.breakerOpenUntilMs = 0;
        node.wasUp = true;
        lastCause = undefined;
        o.log.info({ event: 'store.connected', role: 'commands', server: node.server.address }, `memcached ${node.server.address} ready`);
        o.up(node, reconnected);
      },
      onDown: (reason) => {
        o.down(node);
        if (!o.closed()) o.log.warn({ event: 'store.disconnected', role: 'commands', server: node.server.address, err: reason }, `memcached ${node.server.address} connection lost; reconnecting`);
      },
      onConnectFailed: (reason) => {
        // Once per change of cause, then at debug: a down server is dialled again every 2 s.
        const cause = reason.replace(/\d+\.\d+\.\d+\.\d+:\d+|\[[0-9a-f:]+\]:\d+/gi, 'ADDR');
        if (cause === lastCause || o.closed()) return o.log.debug({ event: 'store.error', server: node.server.address, err: reason }, 'memcached error');
        lastCause = cause;
        o.log.warn({ event: 'store.connect_failed', role: 'commands', server: node.server.address, err: reason }, `memcached ${node.server.address} connection failed: ${reason}`);
      },
    }),
  };
  return node;
}
