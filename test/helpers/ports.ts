import net from 'node:net';
import { waitUntil } from './wait.js';

// The kernel may hand the same ephemeral port out again right after we close it; remembering what this
// process already handed out keeps e.g. the 6 ports of one cluster distinct.
const handedOut = new Set<number>();

/** A port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, close). */
export async function getFreePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const addr = srv.address();
        const p = typeof addr === 'object' && addr ? addr.port : 0;
        srv.close((err) => (err ? reject(err) : resolve(p)));
      });
    });
    if (port > 0 && !handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('getFreePort: could not find an unused port');
}

/** Resolve once a TCP connection to host:port succeeds; reject after timeoutMs. */
export async function waitForPort(port: number, host = '127.0.0.1', timeoutMs = 10_000): Promise<void> {
  await waitUntil(
    () =>
      new Promise<boolean>((resolve, reject) => {
        const sock = net.connect({ port, host });
        sock.setTimeout(1_000);
        sock.once('connect', () => {
          sock.destroy();
          resolve(true);
        });
        sock.once('timeout', () => {
          sock.destroy();
          reject(new Error('connect timeout'));
        });
        sock.once('error', (err) => {
          sock.destroy();
          reject(err);
        });
      }),
    timeoutMs,
    50,
    `${host}:${port} to accept connections`,
  );
}
