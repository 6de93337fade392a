/**
 * Tests of the Redis test harness itself (test/helpers): if these fail, every Redis integration test
 * that builds on the harness is suspect. Cluster and sentinel come from the globalSetup
 * (test/helpers/global-setup.ts) and are only read from and written to here.
 */
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { afterAll, afterEach, describe, expect, inject, it } from 'vitest';
import { makeCerts } from '../helpers/certs.js';
import { getFreePort, waitForPort } from '../helpers/ports.js';
import { startRedis, type RedisServer, type StartRedisOptions } from '../helpers/redis.js';
import { waitUntil } from '../helpers/wait.js';

// Every server and client this file creates, so that afterAll/afterEach can clean up even after a failure.
const servers: RedisServer[] = [];
const clients: (Redis | Cluster)[] = [];

async function server(opts?: StartRedisOptions): Promise<RedisServer> {
  const s = await startRedis(opts);
  servers.push(s);
  return s;
}

/** A client that fails instead of reconnecting, so a refused/rejected connection shows up as an error. */
function client(port: number, opts: RedisOptions = {}): Redis {
  const c = new Redis({ host: '127.0.0.1', port, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, connectTimeout: 2_000, ...opts });
  c.on('error', () => {}); // asserted through promises instead
  clients.push(c);
  return c;
}

/** Connect and PING; on failure reject with the real cause (ioredis' connect() only says "Connection is closed."). */
async function connectAndPing(port: number, opts: RedisOptions): Promise<unknown> {
  const c = client(port, { commandTimeout: 2_000, ...opts });
  let firstError: unknown;
  c.on('error', (err: unknown) => (firstError ??= err));
  try {
    await c.connect();
    return await c.ping();
  } catch (err) {
    throw firstError ?? err;
  } finally {
    c.disconnect();
  }
}

function tcpConnect(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      sock.destroy();
      resolve();
    });
    sock.once('error', reject);
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  // The harness promise: nothing it started outlives the test file.
  for (const s of servers) expect(pidAlive(s.pid), `redis-server pid ${s.pid} (port ${s.port}) still running`).toBe(false);
});

describe('ports and wait helpers', () => {
  it('hands out distinct free ports and waits for a listening one', async () => {
    const ports = await Promise.all(Array.from({ length: 5 }, () => getFreePort()));
    expect(new Set(ports).size).toBe(5);
    // Free means nobody listens: a connect is refused.
    await expect(tcpConnect(ports[0] ?? 0)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await expect(waitForPort(ports[0] ?? 0, '127.0.0.1', 200)).rejects.toThrow(/timed out after 200 ms/);
  });

  it('waitUntil returns the first truthy value and reports the last error on timeout', async () => {
    let n = 0;
    await expect(waitUntil(() => (++n >= 3 ? `done after ${n}` : false), 1_000, 1)).resolves.toBe('done after 3');
    await expect(
      waitUntil(
        () => {
          throw new Error('still booting');
        },
        100,
        10,
        'the thing',
      ),
    ).rejects.toThrow('timed out after 100 ms waiting for the thing: last error: still booting');
  });
});

describe('standalone redis-server', () => {
  it('starts, serves SET/GET, and after kill() the port refuses connections and the pid is gone', async () => {
    const s = await server();
    expect(s.host).toBe('127.0.0.1');
    expect(s.url).toBe(`redis://127.0.0.1:${s.port}`);
    await waitForPort(s.port);

    const c = client(s.port);
    await c.set('greeting', 'hello');
    expect(await c.get('greeting')).toBe('hello');
    expect(await s.command('GET', 'greeting')).toBe('hello');
    // Config from the command line: nothing persisted, nothing daemonized.
    expect(await s.command('CONFIG', 'GET', 'save')).toEqual(['save', '']);
    expect(await s.command('CONFIG', 'GET', 'appendonly')).toEqual(['appendonly', 'no']);
    c.disconnect();

    expect(pidAlive(s.pid)).toBe(true);
    await s.kill();
    expect(pidAlive(s.pid)).toBe(false);
    await expect(tcpConnect(s.port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await expect(s.command('PING')).rejects.toThrow();
    await s.stop(); // idempotent
  });

  it('kill(SIGTERM) shuts down gracefully', async () => {
    const s = await server();
    await s.kill('SIGTERM');
    expect(pidAlive(s.pid)).toBe(false);
    await expect(tcpConnect(s.port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('restart() brings up a new process on the same port, without the old data', async () => {
    const s1 = await server();
    await s1.command('SET', 'k', 'v');
    const s2 = await s1.restart();
    servers.push(s2);
    expect(s2.port).toBe(s1.port);
    expect(s2.url).toBe(s1.url);
    expect(s2.pid).not.toBe(s1.pid);
    expect(pidAlive(s1.pid)).toBe(false);
    expect(await s2.command('PING')).toBe('PONG');
    expect(await s2.command('GET', 'k')).toBeNull();

    // Also after a crash: restart a server that is already dead.
    await s2.kill();
    const s3 = await s2.restart();
    servers.push(s3);
    expect(s3.port).toBe(s1.port);
    expect(await s3.command('PING')).toBe('PONG');
  });

  it('starts on a requested port', async () => {
    const port = await getFreePort();
    const s = await server({ port });
    expect(s.port).toBe(port);
    expect(await s.command('PING')).toBe('PONG');
  });

  it('freeze() makes commands time out while the port stays open; thaw() resumes', async () => {
    const s = await server();
    const c = client(s.port, { commandTimeout: 200 });
    await c.connect();
    expect(await c.ping()).toBe('PONG');

    s.freeze();
    try {
      const t0 = Date.now();
      await expect(c.ping()).rejects.toThrow(/timed out/i);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
      // The kernel still completes TCP handshakes for a stopped process: this is a hang, not a refusal.
      await expect(tcpConnect(s.port)).resolves.toBeUndefined();
    } finally {
      s.thaw();
    }
    expect(await c.ping()).toBe('PONG');
    expect(await c.set('after-thaw', '1')).toBe('OK');
  });

  it('kill(SIGTERM) also ends a frozen server', async () => {
    const s = await server();
    s.freeze();
    await s.kill('SIGTERM');
    expect(pidAlive(s.pid)).toBe(false);
  });

  it('fails fast, with the reason, when the requested port is taken', async () => {
    // Hang up on everyone: an unread connection (the harness's PING probe) would keep close() waiting.
    const blocker = net.createServer((sock) => sock.destroy());
    const port = await getFreePort();
    await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
    try {
      const t0 = Date.now();
      await expect(startRedis({ port })).rejects.toThrow(/Address already in use/);
      // Noticed from the process exit, not from the 10 s start timeout.
      expect(Date.now() - t0).toBeLessThan(5_000);
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });

  it('rejects unknown arguments with the log tail in the error', async () => {
    await expect(startRedis({ extraArgs: ['--no-such-directive', 'x'] })).rejects.toThrow(
      /failed to start: redis-server exited with code 1 during startup[\s\S]*tail of [\s\S]*Bad directive or wrong number of arguments/,
    );
  });
});

describe('authentication', () => {
  it('requires the password, and accepts an ACL user with its own password', async () => {
    const s = await server({ password: 'default-secret', aclUser: { name: 'app', password: 'app-secret' } });
    expect(s.url).toBe(`redis://app:app-secret@127.0.0.1:${s.port}`);

    await expect(connectAndPing(s.port, {})).rejects.toThrow(/NOAUTH/);
    await expect(connectAndPing(s.port, { password: 'wrong' })).rejects.toThrow(/WRONGPASS/);
    await expect(connectAndPing(s.port, { username: 'app', password: 'wrong' })).rejects.toThrow(/WRONGPASS/);
    await expect(connectAndPing(s.port, { password: 'default-secret' })).resolves.toBe('PONG');
    await expect(connectAndPing(s.port, { username: 'app', password: 'app-secret' })).resolves.toBe('PONG');

    // The URL carries the credentials.
    const viaUrl = new Redis(s.url, { lazyConnect: true, retryStrategy: () => null });
    clients.push(viaUrl);
    await viaUrl.connect();
    expect(await viaUrl.call('ACL', 'WHOAMI')).toBe('app');
    // And the harness's own connections log in too.
    expect(await s.command('ACL', 'WHOAMI')).toBe('app');
    expect(await s.commandStats()).toHaveProperty('ping');
  });

  it('password only: URL with an empty user name', async () => {
    const s = await server({ password: 'p@ss/word' });
    expect(s.url).toBe(`redis://:p%40ss%2Fword@127.0.0.1:${s.port}`);
    const viaUrl = new Redis(s.url, { lazyConnect: true, retryStrategy: () => null });
    clients.push(viaUrl);
    await viaUrl.connect();
    expect(await viaUrl.call('ACL', 'WHOAMI')).toBe('default');
  });
});

describe('TLS', () => {
  it('serves TLS only and requires a client certificate signed by the CA', async () => {
    const certs = await makeCerts();
    expect(certs.ca).toMatch(/^-----BEGIN CERTIFICATE-----/);
    expect(certs.clientKey).toMatch(/-----BEGIN PRIVATE KEY-----/);
    expect(await makeCerts()).toBe(certs); // cached per process

    const s = await server({ tls: certs, tlsAuthClients: true });
    expect(s.url).toBe(`rediss://127.0.0.1:${s.port}`);
    expect(await s.command('CONFIG', 'GET', 'port')).toEqual(['port', '0']);

    const mtls = { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey };
    await expect(connectAndPing(s.port, { tls: mtls })).resolves.toBe('PONG');
    // The server cert names localhost too (DNS SAN), not only 127.0.0.1.
    await expect(connectAndPing(s.port, { tls: { ...mtls, servername: 'localhost' } })).resolves.toBe('PONG');

    // Without our CA the server cert is not trusted.
    await expect(connectAndPing(s.port, { tls: { cert: certs.clientCert, key: certs.clientKey } })).rejects.toThrow(
      /self[- ]signed|unable to (get|verify)/i,
    );
    // Without a client cert the server refuses (tls-auth-clients yes).
    await expect(connectAndPing(s.port, { tls: { ca: certs.ca } })).rejects.toThrow();
    // Plain text on the TLS port gets nowhere.
    await expect(connectAndPing(s.port, { connectTimeout: 1_000, commandTimeout: 1_000 })).rejects.toThrow();
  });

  it('without tlsAuthClients, a client that trusts the CA needs no certificate', async () => {
    const certs = await makeCerts();
    const s = await server({ tls: certs });
    await expect(connectAndPing(s.port, { tls: { ca: certs.ca } })).resolves.toBe('PONG');
  });
});

describe('commandStats', () => {
  it('counts exactly the commands sent', async () => {
    const s = await server();
    const c = client(s.port);
    await c.set('a', '1');
    for (let i = 0; i < 7; i++) await c.get('a');
    await c.mget('a', 'b');

    const stats = await s.commandStats();
    expect(stats.get).toBe(7);
    expect(stats.set).toBe(1);
    expect(stats.mget).toBe(1);
    expect(stats.del).toBeUndefined();
    // Reading the stats sends no GETs itself.
    expect((await s.commandStats()).get).toBe(7);
  });
});

describe('shared cluster (globalSetup)', () => {
  it('stores 100 keys spread over all masters; {tag} keys share a slot', async () => {
    const provided = inject('redisCluster');
    expect(provided, 'redisCluster not provided: is test/helpers/global-setup.ts in globalSetup?').toBeDefined();
    expect(provided.nodes).toHaveLength(3);

    const cluster = new Cluster(provided.nodes, { redisOptions: { connectTimeout: 2_000 } });
    cluster.on('error', () => {});
    clients.push(cluster);
    const prefix = `harness:${randomUUID()}:`;
    const keys = Array.from({ length: 100 }, (_, i) => `${prefix}${i}`);
    try {
      await Promise.all(keys.map((k, i) => cluster.set(k, String(i))));
      expect(await Promise.all(keys.map((k) => cluster.get(k)))).toEqual(keys.map((_, i) => String(i)));

      // Every master holds some of them: the keys really were spread over slots.
      const masters = cluster.nodes('master');
      expect(masters).toHaveLength(3);
      const perNode = await Promise.all(masters.map((m) => m.keys(`${prefix}*`).then((ks) => ks.length)));
      expect(perNode.every((n) => n > 0), `keys per master: ${perNode.join(', ')}`).toBe(true);
      expect(perNode.reduce((a, b) => a + b, 0)).toBe(100);

      // Hash tags pin keys to one slot, so multi-key commands work on them ...
      const tagged = [`{${prefix}user}:a`, `{${prefix}user}:b`];
      const slots = await Promise.all(tagged.map((k) => cluster.call('CLUSTER', 'KEYSLOT', k)));
      expect(slots[0]).toBe(slots[1]);
      expect(await cluster.mset(tagged[0] ?? '', '1', tagged[1] ?? '', '2')).toBe('OK');
      expect(await cluster.mget(...tagged)).toEqual(['1', '2']);
      await cluster.del(...tagged);
      // ... and not on keys in different slots.
      const [k0, k1] = [keys[0] ?? '', keys[1] ?? ''];
      expect(await cluster.call('CLUSTER', 'KEYSLOT', k0)).not.toBe(await cluster.call('CLUSTER', 'KEYSLOT', k1));
      await expect(cluster.mget(k0, k1)).rejects.toThrow(/CROSSSLOT|same slot/i);
    } finally {
      await Promise.all(keys.map((k) => cluster.del(k)));
      cluster.disconnect();
    }
  });
});

describe('shared sentinel set (globalSetup)', () => {
  it('resolves the master through the sentinels and writes/reads there', async () => {
    const provided = inject('redisSentinel');
    expect(provided, 'redisSentinel not provided: is test/helpers/global-setup.ts in globalSetup?').toBeDefined();
    expect(provided.name).toBe('mymaster');
    expect(provided.sentinels).toHaveLength(3);

    const c = new Redis({ sentinels: provided.sentinels, name: provided.name, lazyConnect: true, sentinelRetryStrategy: () => null });
    c.on('error', () => {});
    clients.push(c);
    await c.connect();
    const key = `harness:${randomUUID()}`;
    try {
      expect(await c.set(key, 'via-sentinel')).toBe('OK');
      expect(await c.get(key)).toBe('via-sentinel');

      // We are really talking to the master the sentinels name.
      const first = provided.sentinels[0];
      if (!first) throw new Error('no sentinel');
      const s = client(first.port);
      const [, masterPort] = (await s.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', provided.name)) as [string, string];
      const role = (await c.call('ROLE')) as unknown[];
      expect(role[0]).toBe('master');
      expect(await c.info('server')).toContain(`tcp_port:${masterPort}`);
    } finally {
      await c.del(key);
    }
  });
});
