/**
 * Real redis-server processes for integration tests: standalone (optionally password/ACL/TLS), a cluster
 * and a sentinel set. Every process binds 127.0.0.1 on a free port, keeps its data in memory only, logs
 * to a file in its own temp dir (never to the test output) and is killed when the test process ends.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { appendFile, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ConnectionOptions } from 'node:tls';
import { Redis, type RedisOptions } from 'ioredis';
import type { Certs } from './certs.js';
import { getFreePort } from './ports.js';
import { waitUntil } from './wait.js';

export interface RedisServer {
  host: '127.0.0.1';
  port: number;
  pid: number;
  /** redis://[user:pass@]127.0.0.1:P, or rediss:// when serving TLS (the CA etc. must still be passed as `tls`). */
  url: string;
  /** Send `signal` (default SIGKILL) and resolve once the process has exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** SIGSTOP: the port stays open and the kernel accepts connections, but nothing is answered. */
  freeze(): void;
  /** SIGCONT after freeze(). */
  thaw(): void;
  /** Kill this process if still running and start a new one on the same port with the same options. */
  restart(): Promise<RedisServer>;
  /** One command through a short-lived connection (auth/TLS applied). */
  command(...args: (string | number)[]): Promise<unknown>;
  /** INFO commandstats as command name -> calls (subcommands appear as e.g. `client|setinfo`). */
  commandStats(): Promise<Record<string, number>>;
  /** Kill (SIGKILL) and wait; safe to call twice. */
  stop(): Promise<void>;
}

export interface StartRedisOptions {
  /** requirepass: the password of the `default` user. */
  password?: string;
  /** An extra ACL user with all permissions; helper connections then log in as this user. */
  aclUser?: { name: string; password: string };
  /** Serve TLS only (plain port disabled) with these certs. */
  tls?: Certs;
  /** With `tls`: require a client certificate signed by the CA (`tls-auth-clients yes`). Default false. */
  tlsAuthClients?: boolean;
  /** A fixed port, e.g. to restart a server where clients expect it. Default: a free port. */
  port?: number;
  /** Appended last, so they override the harness's own arguments. */
  extraArgs?: string[];
}

export interface RedisCluster {
  nodes: { host: string; port: number }[];
  servers: RedisServer[];
  /** Summed over all nodes. */
  commandStats(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

export interface RedisSentinelSet {
  name: 'mymaster';
  sentinels: { host: string; port: number }[];
  /** The sentinel processes themselves, for tests that kill one. */
  sentinelServers: RedisServer[];
  /** The initial master and replica; after a failover the roles are swapped. */
  master: RedisServer;
  replica: RedisServer;
  /** Summed over master and replica (sentinels not included). */
  commandStats(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

const HOST = '127.0.0.1';
const STANDALONE_START_TIMEOUT_MS = 10_000;
const GROUP_START_TIMEOUT_MS = 20_000;
const SENTINEL_NAME = 'mymaster';

// ---------------------------------------------------------------------------------------------------------
// Process hygiene. Kept on globalThis so that a module graph evaluated twice in one process (vitest may
// re-import per test file) shares one registry and registers the exit hooks once.

interface Registry {
  children: Set<ChildProcess>;
  rootDir: string | undefined;
}

const REGISTRY_KEY = Symbol.for('token-sidecar.test.redis-harness');
const globalWithRegistry = globalThis as typeof globalThis & { [REGISTRY_KEY]?: Registry };
const registry: Registry = (globalWithRegistry[REGISTRY_KEY] ??= createRegistry());

function createRegistry(): Registry {
  const reg: Registry = { children: new Set(), rootDir: undefined };
  const cleanup = () => {
    for (const child of reg.children) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    reg.children.clear();
    // Logs are kept on request, e.g. to read a sentinel's view after a flaky failover test.
    if (reg.rootDir && !process.env.KEEP_REDIS_TMP) rmSync(reg.rootDir, { recursive: true, force: true });
  };
  process.on('exit', cleanup);
  // Vitest stops its fork workers with SIGTERM, and a signal death skips 'exit' handlers: clean up here
  // too, then die of the same signal unless another listener (e.g. vitest's in its main process) exits.
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(signal, () => {
      cleanup();
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
  return reg;
}

function rootDir(): string {
  return (registry.rootDir ??= mkdtempSync(path.join(os.tmpdir(), 'token-sidecar-redis-')));
}

function tailOfLog(file: string, lines = 40): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

// ---------------------------------------------------------------------------------------------------------
// Client side

interface ConnAuth {
  username?: string;
  password?: string;
  tls?: ConnectionOptions;
}

function clientOptions(port: number, auth: ConnAuth, timeoutMs: number): RedisOptions {
  return {
    host: HOST,
    port,
    ...auth,
    lazyConnect: true,
    // One-off connections: fail fast instead of reconnecting or queueing.
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
  };
}

async function oneShot(port: number, auth: ConnAuth, args: (string | number)[], timeoutMs = 5_000): Promise<unknown> {
  const [cmd, ...rest] = args;
  if (cmd === undefined) throw new Error('command(): no command given');
  const client = new Redis(clientOptions(port, auth, timeoutMs));
  // ioredis rejects connect() with a bare "Connection is closed." when the handshake fails (WRONGPASS,
  // TLS trust, ECONNREFUSED); the reason only comes as an 'error' event, so keep it for the rejection.
  let firstError: unknown;
  client.on('error', (err: unknown) => (firstError ??= err));
  // ioredis settles connect() only commandTimeout + its 2 s disconnect grace after a silent peer (frozen
  // server, foreign process on the port); a watchdog keeps this call within timeoutMs.
  let watchdog: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    watchdog = setTimeout(() => {
      client.disconnect();
      reject(new Error(`no reply from 127.0.0.1:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([client.connect().then(() => client.call(String(cmd), rest)), timedOut]);
  } catch (err) {
    throw firstError ?? err;
  } finally {
    clearTimeout(watchdog);
    client.disconnect();
  }
}

function replyText(reply: unknown): string {
  if (typeof reply === 'string') return reply;
  if (Buffer.isBuffer(reply)) return reply.toString('utf8');
  throw new Error(`expected a text reply, got ${typeof reply}`);
}

/** `INFO` sections as key -> value. */
function parseInfo(reply: unknown): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of replyText(reply).split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

export function parseCommandStats(reply: unknown): Record<string, number> {
  const stats: Record<string, number> = {};
  for (const [key, value] of parseInfo(reply)) {
    if (!key.startsWith('cmdstat_')) continue;
    const calls = /(?:^|,)calls=(\d+)/.exec(value);
    if (calls?.[1]) stats[key.slice('cmdstat_'.length)] = Number(calls[1]);
  }
  return stats;
}

function sumStats(all: Record<string, number>[]): Record<string, number> {
  const total: Record<string, number> = {};
  for (const stats of all) for (const [cmd, n] of Object.entries(stats)) total[cmd] = (total[cmd] ?? 0) + n;
  return total;
}

/** Sentinel replies are maps: flat [k, v, k, v] arrays (RESP2 / ioredis "legacy"), or objects (RESP3 mapping). */
function toRecord(reply: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (Array.isArray(reply)) {
    for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = String(reply[i + 1]);
  } else if (reply instanceof Map) {
    for (const [k, v] of reply) out[String(k)] = String(v);
  } else if (reply && typeof reply === 'object') {
    for (const [k, v] of Object.entries(reply)) out[k] = String(v);
  }
  return out;
}

function toRecords(reply: unknown): Record<string, string>[] {
  return Array.isArray(reply) ? reply.map(toRecord) : [];
}

// ---------------------------------------------------------------------------------------------------------
// Server side

interface ProcSpec {
  label: string;
  dir: string;
  port: number;
  /** Arguments after `redis-server`. */
  argv: string[];
  auth: ConnAuth;
  url: string;
  startTimeoutMs: number;
}

class StartError extends Error {
  constructor(
    message: string,
    readonly addressInUse: boolean,
  ) {
    super(message);
  }
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Spawn one redis-server and resolve once it answers PING; on failure kill it and throw with its log. */
async function launch(spec: ProcSpec): Promise<RedisServer> {
  const logFile = path.join(spec.dir, `${spec.label}-${spec.port}.log`);
  await appendFile(logFile, `\n=== ${new Date().toISOString()} redis-server ${spec.argv.map((a) => (a === '' ? "''" : a)).join(' ')}\n`);
  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn('redis-server', spec.argv, { cwd: spec.dir, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd); // the child has its own copy
  }
  registry.children.add(child);
  let exitDescription = '';
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitDescription = signal ? `killed by ${signal}` : `exited with code ${code}`;
      registry.children.delete(child);
      resolve();
    });
    // spawn failures (ENOENT: redis-server not installed) come as 'error' without 'exit'.
    child.once('error', (err) => {
      exitDescription = `failed to spawn: ${err.message}`;
      registry.children.delete(child);
      resolve();
    });
  });

  try {
    // Stop polling at once if the process dies (bad argument, port taken) instead of waiting for the timeout.
    const died = new AbortController();
    void exited.then(() => died.abort(new Error(`redis-server ${exitDescription} during startup`)));
    await waitUntil(
      async () => (await oneShot(spec.port, spec.auth, ['PING'], 1_000)) === 'PONG',
      spec.startTimeoutMs,
      50,
      `${spec.label} on port ${spec.port} to answer PING`,
      died.signal,
    );
  } catch (err) {
    if (isRunning(child)) child.kill('SIGKILL');
    await exited;
    const log = tailOfLog(logFile);
    const message = err instanceof Error ? err.message : String(err);
    throw new StartError(
      `${spec.label} on 127.0.0.1:${spec.port} failed to start: ${message}\n--- tail of ${logFile} ---\n${log}`,
      /Address already in use/.test(log),
    );
  }

  const pid = child.pid;
  if (pid === undefined) throw new Error('redis-server has no pid');
  let frozen = false;
  let restarting: Promise<RedisServer> | undefined;

  const signalIfRunning = (signal: NodeJS.Signals) => {
    if (!isRunning(child)) throw new Error(`${spec.label} ${pid} is not running (${exitDescription})`);
    process.kill(pid, signal);
  };

  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => {
    if (!isRunning(child)) return exited;
    child.kill(signal);
    if (signal !== 'SIGKILL') {
      // A stopped process only acts on a catchable signal once continued.
      if (frozen) process.kill(pid, 'SIGCONT');
      // A graceful shutdown should take milliseconds; don't let a wedged one hang the test.
      const escalate = setTimeout(() => isRunning(child) && child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(escalate);
    }
    frozen = false;
    return exited;
  };

  const server: RedisServer = {
    host: HOST,
    port: spec.port,
    pid,
    url: spec.url,
    kill,
    freeze: () => {
      signalIfRunning('SIGSTOP');
      frozen = true;
    },
    thaw: () => {
      signalIfRunning('SIGCONT');
      frozen = false;
    },
    // Concurrent calls share one restart rather than racing for the port.
    restart: () =>
      (restarting ??= (async () => {
        await kill('SIGKILL');
        return launch(spec);
      })().finally(() => (restarting = undefined))),
    command: (...args) => oneShot(spec.port, spec.auth, args),
    commandStats: async () => parseCommandStats(await oneShot(spec.port, spec.auth, ['INFO', 'commandstats'])),
    stop: () => kill('SIGKILL'),
  };
  return server;
}

/** Launch with a fresh port from `build`, retrying when another process grabbed the port in the meantime. */
async function launchOnFreePort(build: () => Promise<ProcSpec>): Promise<RedisServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await launch(await build());
    } catch (err) {
      if (!(err instanceof StartError && err.addressInUse) || attempt >= 3) throw err;
    }
  }
}

function standaloneSpec(dir: string, port: number, opts: StartRedisOptions): ProcSpec {
  const argv = ['--save', '', '--appendonly', 'no', '--bind', HOST, '--dir', dir, '--daemonize', 'no'];
  const auth: ConnAuth = {};
  if (opts.password !== undefined) {
    argv.push('--requirepass', opts.password);
    auth.password = opts.password;
  }
  if (opts.aclUser) {
    argv.push('--user', opts.aclUser.name, 'on', `>${opts.aclUser.password}`, '~*', '&*', '+@all');
    auth.username = opts.aclUser.name;
    auth.password = opts.aclUser.password;
  }
  if (opts.tls) {
    argv.push(
      '--port', '0',
      '--tls-port', String(port),
      '--tls-cert-file', opts.tls.certFile,
      '--tls-key-file', opts.tls.keyFile,
      '--tls-ca-cert-file', opts.tls.caFile,
      '--tls-auth-clients', opts.tlsAuthClients ? 'yes' : 'no',
    );
    // The harness's own connections always present the client cert, so they work either way.
    auth.tls = { ca: opts.tls.ca, cert: opts.tls.clientCert, key: opts.tls.clientKey };
  } else {
    argv.push('--port', String(port));
  }
  argv.push(...(opts.extraArgs ?? []));

  const userInfo = auth.password === undefined ? '' : `${encodeURIComponent(auth.username ?? '')}:${encodeURIComponent(auth.password)}@`;
  const url = `${opts.tls ? 'rediss' : 'redis'}://${userInfo}${HOST}:${port}`;
  return { label: 'redis', dir, port, argv, auth, url, startTimeoutMs: STANDALONE_START_TIMEOUT_MS };
}

/** Start a standalone redis-server on 127.0.0.1 (a free port unless `port` is given). */
export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServer> {
  const dir = await mkdtemp(path.join(rootDir(), 'redis-'));
  if (opts.port !== undefined) return launch(standaloneSpec(dir, opts.port, opts));
  return launchOnFreePort(async () => standaloneSpec(dir, await getFreePort(), opts));
}

/** Kill all of `servers` in parallel. */
async function stopAll(servers: RedisServer[]): Promise<void> {
  await Promise.all(servers.map((s) => s.stop()));
}

/** Run `fn`; if it throws, stop whatever `started` collected so far. */
async function startGroup<T>(fn: (started: RedisServer[]) => Promise<T>): Promise<T> {
  const started: RedisServer[] = [];
  try {
    return await fn(started);
  } catch (err) {
    await stopAll(started);
    throw err;
  }
}

function runRedisCli(args: string[], logFile: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile('redis-cli', args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      void appendFile(logFile, `$ redis-cli ${args.join(' ')}\n${stdout}${stderr}\n`)
        .catch(() => undefined)
        .then(() => {
          // The output is in the log, which the caller reports.
          if (err) reject(new Error(`redis-cli ${args.join(' ')} failed (${err.killed ? 'timed out' : `exit code ${String(err.code)}`})`));
          else resolve();
        });
    });
    registry.children.add(child);
    child.once('exit', () => registry.children.delete(child));
  });
}

/** A cluster of `masters` (default 3) masters, no replicas, all 16384 slots assigned and agreed on. */
export async function startCluster(opts: { masters?: number } = {}): Promise<RedisCluster> {
  const masters = opts.masters ?? 3;
  const deadline = Date.now() + GROUP_START_TIMEOUT_MS;
  const dir = await mkdtemp(path.join(rootDir(), 'cluster-'));

  return startGroup(async (started) => {
    const servers = await Promise.all(
      Array.from({ length: masters }, () =>
        launchOnFreePort(async () => {
          const port = await getFreePort();
          // An explicit bus port (Redis >= 7): the default port+10000 may be taken or exceed 65535.
          const busPort = await getFreePort();
          const spec = standaloneSpec(dir, port, {
            extraArgs: [
              '--cluster-enabled', 'yes',
              '--cluster-port', String(busPort),
              '--cluster-node-timeout', '2000',
              '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
            ],
          });
          return { ...spec, label: 'cluster-node', startTimeoutMs: GROUP_START_TIMEOUT_MS };
        }).then((s) => (started.push(s), s)),
      ),
    );

    const createLog = path.join(dir, 'cluster-create.log');
    try {
      await runRedisCli(
        ['--cluster', 'create', ...servers.map((s) => `${HOST}:${s.port}`), '--cluster-replicas', '0', '--cluster-yes'],
        createLog,
        Math.max(1_000, deadline - Date.now()),
      );
      // redis-cli returns once the config is consistent from its point of view; clients need every node
      // to be ok, to know all masters and to see all slots.
      await Promise.all(
        servers.map((s) =>
          waitUntil(
            async () => {
              const info = parseInfo(await s.command('CLUSTER', 'INFO'));
              return (
                info.get('cluster_state') === 'ok' &&
                info.get('cluster_slots_assigned') === '16384' &&
                info.get('cluster_slots_ok') === '16384' &&
                info.get('cluster_known_nodes') === String(masters)
              );
            },
            Math.max(1_000, deadline - Date.now()),
            50,
            `cluster node ${s.port} to report cluster_state:ok with ${masters} nodes`,
          ),
        ),
      );
    } catch (err) {
      const logs = servers.map((s) => `--- cluster-node-${s.port}.log ---\n${tailOfLog(path.join(dir, `cluster-node-${s.port}.log`), 15)}`);
      throw new Error(`${err instanceof Error ? err.message : String(err)}\n--- ${createLog} ---\n${tailOfLog(createLog)}\n${logs.join('\n')}`);
    }

    return {
      nodes: servers.map((s) => ({ host: HOST, port: s.port })),
      servers,
      commandStats: async () => sumStats(await Promise.all(servers.map((s) => s.commandStats()))),
      stop: () => stopAll(servers),
    };
  });
}

/** One master, one replica and three sentinels (quorum 2) monitoring them as `mymaster`. */
export async function startSentinel(): Promise<RedisSentinelSet> {
  const deadline = Date.now() + GROUP_START_TIMEOUT_MS;
  const remaining = () => Math.max(1_000, deadline - Date.now());
  const dir = await mkdtemp(path.join(rootDir(), 'sentinel-'));

  return startGroup(async (started) => {
    // Redis 7 delays a diskless full sync by 5 s (waiting for more replicas to batch); we have one.
    // Both get it, since after a failover the replica is the master the old master syncs from.
    const noSyncDelay = ['--repl-diskless-sync-delay', '0'];
    const master = await startRedis({ extraArgs: noSyncDelay });
    started.push(master);
    const replica = await startRedis({ extraArgs: [...noSyncDelay, '--replicaof', HOST, String(master.port)] });
    started.push(replica);
    // Sentinels learn about the replica from the master's INFO; start them once replication is up.
    await waitUntil(
      async () => parseInfo(await replica.command('INFO', 'replication')).get('master_link_status') === 'up',
      remaining(),
      50,
      'replica to sync with the master',
    );

    const sentinelServers = await Promise.all(
      Array.from({ length: 3 }, () =>
        launchOnFreePort(async () => {
          const port = await getFreePort();
          // Sentinel rewrites its config file (ids, discovered peers), so each one needs its own file.
          const conf = path.join(dir, `sentinel-${port}.conf`);
          await writeFile(
            conf,
            [
              `port ${port}`,
              `bind ${HOST}`,
              `dir ${dir}`,
              'daemonize no',
              'sentinel resolve-hostnames no',
              `sentinel monitor ${SENTINEL_NAME} ${HOST} ${master.port} 2`,
              `sentinel down-after-milliseconds ${SENTINEL_NAME} 1000`,
              `sentinel failover-timeout ${SENTINEL_NAME} 5000`,
              `sentinel parallel-syncs ${SENTINEL_NAME} 1`,
              '',
            ].join('\n'),
          );
          return { label: 'sentinel', dir, port, argv: [conf, '--sentinel'], auth: {}, url: `redis://${HOST}:${port}`, startTimeoutMs: GROUP_START_TIMEOUT_MS };
        }).then((s) => (started.push(s), s)),
      ),
    );

    // Sentinels find each other through hello messages on the master (every 2 s); until then a failover
    // could not reach quorum and clients might be told about a partial topology.
    try {
      await Promise.all(
        sentinelServers.map((s) =>
          waitUntil(
            async () => {
              const m = toRecord(await s.command('SENTINEL', 'MASTER', SENTINEL_NAME));
              if (m.flags !== 'master' || m.port !== String(master.port)) return false;
              const peers = toRecords(await s.command('SENTINEL', 'SENTINELS', SENTINEL_NAME));
              const replicas = toRecords(await s.command('SENTINEL', 'REPLICAS', SENTINEL_NAME));
              return (
                peers.length === 2 &&
                replicas.length === 1 &&
                replicas[0]?.port === String(replica.port) &&
                replicas[0]?.flags === 'slave' &&
                replicas[0]?.['master-link-status'] === 'ok'
              );
            },
            remaining(),
            100,
            `sentinel ${s.port} to know the master, 1 replica and 2 other sentinels`,
          ),
        ),
      );
    } catch (err) {
      const logs = sentinelServers.map((s) => `--- sentinel-${s.port}.log ---\n${tailOfLog(path.join(dir, `sentinel-${s.port}.log`), 15)}`);
      throw new Error(`${err instanceof Error ? err.message : String(err)}\n${logs.join('\n')}`);
    }

    return {
      name: SENTINEL_NAME,
      sentinels: sentinelServers.map((s) => ({ host: HOST, port: s.port })),
      sentinelServers,
      master,
      replica,
      commandStats: async () => sumStats(await Promise.all([master.commandStats(), replica.commandStats()])),
      stop: () => stopAll([...sentinelServers, master, replica]),
    };
  });
}
