/**
 * Real memcached processes for integration tests (Debian's `memcached`). Each binds 127.0.0.1 on a free port, UDP off,
 * logs to a file in its own temp dir, and is killed when the test process ends. Modelled on ./redis.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { getFreePort } from './ports.js';
import { waitUntil } from './wait.js';

const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 10_000;

export interface MemcachedServer {
  host: '127.0.0.1';
  port: number;
  pid: number;
  /** `127.0.0.1:PORT`, as store.memcached.servers takes it. */
  address: string;
  /** Send `signal` (default SIGKILL) and resolve once the process has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** SIGSTOP: the port stays open and the kernel accepts connections, but nothing is answered. */
  freeze(): void;
  /** SIGCONT after freeze(). */
  thaw(): void;
  /** Kill this process if still running and start a new one (empty) on the same port. */
  restart(): Promise<MemcachedServer>;
  /** Raw text-protocol request(s) on a short-lived connection; resolves with the reply once it ends with `until`. */
  command(text: string, until?: RegExp): Promise<string>;
  /** The value of `key`, or undefined. */
  get(key: string): Promise<string | undefined>;
  /** Store `value` under `key` for `ttlS` seconds. */
  set(key: string, value: string, ttlS?: number): Promise<void>;
  /** Every live key with its expiry (Unix seconds; -1: never), from `lru_crawler metadump all`. */
  keys(): Promise<{ key: string; exp: number }[]>;
  /** The server's counters (`stats`). */
  stats(): Promise<Record<string, number>>;
  /** Kill (SIGKILL) and wait; safe to call twice. */
  stop(): Promise<void>;
}

// Kept on globalThis so that a module graph evaluated twice in one process shares one registry and one set of hooks.
interface Registry {
  children: Set<ChildProcess>;
  rootDir: string | undefined;
}
const REGISTRY_KEY = Symbol.for('token-sidecar.test.memcached-harness');
const globalWithRegistry = globalThis as typeof globalThis & { [REGISTRY_KEY]?: Registry };
const registry: Registry = (globalWithRegistry[REGISTRY_KEY] ??= createRegistry());

function createRegistry(): Registry {
  const reg: Registry = { children: new Set(), rootDir: undefined };
  const cleanup = () => {
    for (const child of reg.children) {
      try {
        // A stopped process acts on SIGKILL too; nothing else to do.
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    reg.children.clear();
    if (reg.rootDir) rmSync(reg.rootDir, { recursive: true, force: true });
  };
  process.on('exit', cleanup);
  // A signal death skips 'exit' handlers (vitest stops its fork workers with SIGTERM): clean up here too.
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(signal, () => {
      cleanup();
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
  return reg;
}

function rootDir(): string {
  return (registry.rootDir ??= mkdtempSync(path.join(os.tmpdir(), 'token-sidecar-memcached-')));
}

/** One request on its own connection, answered once the reply matches `until` (or rejected after `timeoutMs`). */
export function memcachedCommand(port: number, text: string, until = /(?:^|\r\n)(END|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|OK|ERROR|VERSION [^\r]*|(?:CLIENT|SERVER)_ERROR [^\r]*)\r\n$/, timeoutMs = 3_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: HOST, port });
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no reply from ${HOST}:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      reply += chunk;
      if (until.test(reply)) {
        clearTimeout(timer);
        socket.end();
        resolve(reply);
      }
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.write(text);
  });
}

async function launch(dir: string, port: number): Promise<MemcachedServer> {
  const logFile = path.join(dir, `memcached-${port}.log`);
  const fd = openSync(logFile, 'a');
  // memcached refuses to run as root without -u; CI runs as root.
  const argv = ['-l', HOST, '-p', String(port), '-U', '0', '-m', '64', '-v', ...(process.getuid?.() === 0 ? ['-u', 'root'] : [])];
  let child: ChildProcess;
  try {
    child = spawn('memcached', argv, { stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
  registry.children.add(child);
  let exitDescription = '';
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitDescription = signal ? `killed by ${signal}` : `exited with code ${code}`;
      registry.children.delete(child);
      resolve();
    });
    child.once('error', (err) => {
      exitDescription = `failed to spawn: ${err.message}`;
      registry.children.delete(child);
      resolve();
    });
  });
  const running = () => child.exitCode === null && child.signalCode === null;
  try {
    const died = new AbortController();
    void exited.then(() => died.abort(new Error(`memcached ${exitDescription} during startup`)));
    await waitUntil(async () => (await memcachedCommand(port, 'version\r\n', undefined, 1_000)).startsWith('VERSION'), START_TIMEOUT_MS, 50, `memcached on port ${port}`, died.signal);
  } catch (err) {
    if (running()) child.kill('SIGKILL');
    await exited;
    let log = '(no log)';
    try {
      log = readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
    } catch {
      // no log
    }
    throw new Error(`memcached on ${HOST}:${port} failed to start: ${err instanceof Error ? err.message : String(err)}\n${log}`);
  }
  const pid = child.pid ?? -1;
  let frozen = false;
  let restarting: Promise<MemcachedServer> | undefined;
  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    if (!running()) return exited;
    child.kill(signal);
    if (signal !== 'SIGKILL' && frozen) process.kill(pid, 'SIGCONT');
    frozen = false;
    return exited;
  };
  const server: MemcachedServer = {
    host: HOST,
    port,
    pid,
    address: `${HOST}:${port}`,
    kill,
    freeze: () => {
      process.kill(pid, 'SIGSTOP');
      frozen = true;
    },
    thaw: () => {
      if (running()) process.kill(pid, 'SIGCONT');
      frozen = false;
    },
    restart: () =>
      (restarting ??= (async () => {
        await kill('SIGKILL');
        return launch(dir, port);
      })().finally(() => (restarting = undefined))),
    command: (text, until) => memcachedCommand(port, text, until),
    get: async (key) => {
      const reply = await memcachedCommand(port, `get ${key}\r\n`);
      const m = /^VALUE \S+ \d+ \d+\r\n([\s\S]*)\r\nEND\r\n$/.exec(reply);
      return m?.[1];
    },
    set: async (key, value, ttlS = 60) => {
      const reply = await memcachedCommand(port, `set ${key} 0 ${ttlS} ${Buffer.byteLength(value)}\r\n${value}\r\n`);
      if (reply !== 'STORED\r\n') throw new Error(`set ${key}: ${reply.trim()}`);
    },
    keys: async () => {
      const reply = await memcachedCommand(port, 'lru_crawler metadump all\r\n', /(?:^|\n)(END|ERROR[^\n]*)\r\n$/);
      return [...reply.matchAll(/^key=(\S+) exp=(-?\d+)/gm)].map((m) => ({ key: decodeURIComponent(m[1] ?? ''), exp: Number(m[2]) }));
    },
    stats: async () => {
      const reply = await memcachedCommand(port, 'stats\r\n');
      return Object.fromEntries([...reply.matchAll(/^STAT (\S+) (\d+(?:\.\d+)?)\r$/gm)].map((m) => [m[1] ?? '', Number(m[2])]));
    },
    stop: () => kill('SIGKILL'),
  };
  return server;
}

/** Start memcached on 127.0.0.1 (a free port unless `port` is given). */
export async function startMemcached(opts: { port?: number } = {}): Promise<MemcachedServer> {
  const dir = mkdtempSync(path.join(rootDir(), 'mc-'));
  if (opts.port !== undefined) return launch(dir, opts.port);
  for (let attempt = 1; ; attempt++) {
    try {
      return await launch(dir, await getFreePort());
    } catch (err) {
      if (attempt >= 3) throw err;
    }
  }
}
