/**
 * CONNECT (RFC 9110 §9.3.6). A token cannot be added to TLS the sidecar does not terminate, so tunnels are refused,
 * except one case: undici's EnvHttpProxyAgent, hpagent and other proxy agents tunnel even a plain-http target
 * (`CONNECT api.vendor.test:80`). When a host route serves that host, the tunnel is accepted and the HTTP inside it is
 * served by the same server as any proxied request: same parser, limits, route rules, token and errors.
 */
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { SidecarError } from '../core/errors.js';
import { sendErrorOnSocket } from '../http/problem.js';
import type { Logger } from '../log.js';
import { hasHostRoute, type RouteTable } from './match.js';

/** What a 405 to a CONNECT names as allowed instead (RFC 9110 §15.5.6). */
const TUNNEL_ALLOW = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';
/** `host:port` (a name or IPv4) or `[v6]:port`: the only form a CONNECT target may take. */
const AUTHORITY = /^([a-z0-9.-]+|\[[0-9a-f:.]+\]):(\d{1,5})$/i;
/** The first byte of a TLS record carrying a handshake (RFC 8446 §5.1). */
const TLS_HANDSHAKE = 0x16;

/** The CONNECT authority of the tunnel a socket carries, if it does. */
const tunnels = new WeakMap<object, string>();

/** `host:port` of the tunnel `socket` was accepted for; requests inside it are served as absolute-form to that host. */
export function tunnelAuthority(socket: object): string | undefined {
  return tunnels.get(socket);
}

export function tunnelHandler(server: Server, table: () => RouteTable, log: Logger) {
  return (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const refused = refusal(req.url ?? '', table());
    if (refused) {
      sendErrorOnSocket(socket, refused);
      return;
    }
    const authority = (req.url ?? '').toLowerCase();
    // A reset at any point from here on is the app's to see; it must not reach the process as an unhandled 'error'.
    socket.on('error', ignore);
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    tunnels.set(socket, authority);
    const serve = (first: Buffer): void => {
      if (first.length > 0 && first[0] === TLS_HANDSHAKE) {
        log.warn({ event: 'tunnel.tls_refused', authority }, `TLS inside a tunnel to ${authority} cannot carry a token: the app must call http://${authority}/`);
        socket.destroy();
        return;
      }
      if (first.length > 0) socket.unshift(first);
      // The socket was detached from the HTTP parser for CONNECT; a new one takes it as a fresh connection. Node does
      // not hand the socket's handle to the new parser (it was consumed once), so bytes come as 'data' events, the
      // unshifted first chunk included, once the socket flows again.
      server.emit('connection', socket);
      socket.resume();
    };
    if (head.length > 0) {
      serve(head);
      return;
    }
    // Until the first byte the server's own header timeout does not run yet: this one stands in for it.
    const idle = setTimeout(() => socket.destroy(), server.headersTimeout);
    socket.once('close', () => clearTimeout(idle));
    socket.once('data', (chunk: Buffer) => {
      clearTimeout(idle);
      socket.pause();
      serve(chunk);
    });
  };
}

function refusal(target: string, table: RouteTable): SidecarError | undefined {
  const m = AUTHORITY.exec(target);
  const refuse = (detail: string) => new SidecarError('TUNNEL_NOT_SUPPORTED', detail, { allow: TUNNEL_ALLOW });
  if (!m) return refuse('CONNECT is not supported: call http:// and the sidecar opens TLS to the vendor');
  const port = Number(m[2]);
  const served = hasHostRoute(table, target.toLowerCase());
  if (served && port === 443) {
    return refuse(`a tunnel to ${target} would carry TLS the sidecar cannot add a token to: call http://${m[1] ?? ''}/ and the sidecar opens TLS to the vendor`);
  }
  if (!served || port < 1 || port > 65_535) return refuse('CONNECT is not supported: call http:// and the sidecar opens TLS to the vendor');
  return undefined;
}

const ignore = (): void => undefined;
