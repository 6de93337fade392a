import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

/** A throwaway CA with a server cert (localhost / 127.0.0.1) and a client cert for mTLS, as files and PEM. */
export interface Certs {
  dir: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  clientCertFile: string;
  clientKeyFile: string;
  ca: string;
  cert: string;
  key: string;
  clientCert: string;
  clientKey: string;
}

// Our own config instead of the system openssl.cnf: OpenSSL 3's default v3_ca section plus `-addext`
// produces "extension already exists" errors, and a distro config may add surprises.
const OPENSSL_CNF = `
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
`;

function openssl(args: string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { cwd, timeout: 20_000 }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`openssl ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve();
    });
  });
}

async function generate(dir: string): Promise<Certs> {
  await mkdir(dir, { recursive: true });
  const cnf = path.join(dir, 'openssl.cnf');
  await writeFile(cnf, OPENSSL_CNF);
  // EC P-256: key generation is instant, unlike RSA, and Redis, Node and OpenSSL 3 all accept it.
  const genKey = (file: string) => openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', file], dir);
  // Explicit random serials: no ca.srl serial file for the two concurrent signings to race on.
  const serial = () => `0x${randomBytes(8).toString('hex')}`;

  await Promise.all([genKey('ca.key'), genKey('server.key'), genKey('client.key')]);
  await openssl(['req', '-config', cnf, '-x509', '-new', '-key', 'ca.key', '-sha256', '-days', '7', '-subj', '/CN=token-sidecar test CA', '-extensions', 'v3_ca', '-set_serial', serial(), '-out', 'ca.crt'], dir);
  const issue = async (name: 'server' | 'client', cn: string) => {
    await openssl(['req', '-config', cnf, '-new', '-key', `${name}.key`, '-subj', `/CN=${cn}`, '-out', `${name}.csr`], dir);
    await openssl(
      ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', serial(), '-days', '7', '-sha256', '-extfile', cnf, '-extensions', name, '-out', `${name}.crt`],
      dir,
    );
  };
  await Promise.all([issue('server', 'localhost'), issue('client', 'token-sidecar-test-client')]);

  const files = {
    caFile: path.join(dir, 'ca.crt'),
    certFile: path.join(dir, 'server.crt'),
    keyFile: path.join(dir, 'server.key'),
    clientCertFile: path.join(dir, 'client.crt'),
    clientKeyFile: path.join(dir, 'client.key'),
  };
  const [ca, cert, key, clientCert, clientKey] = await Promise.all(
    [files.caFile, files.certFile, files.keyFile, files.clientCertFile, files.clientKeyFile].map((f) => readFile(f, 'utf8')),
  ) as [string, string, string, string, string];
  return { dir, ...files, ca, cert, key, clientCert, clientKey };
}

// One generation per process (i.e. per test file with the forks pool) and per target dir. Kept on
// globalThis so a module graph evaluated twice in one process still shares it (and its exit hooks).
interface CertsState {
  cache: Map<string, Promise<Certs>>;
  tempDir: string | undefined;
}
const STATE_KEY = Symbol.for('token-sidecar.test.certs');
const globalWithState = globalThis as typeof globalThis & { [STATE_KEY]?: CertsState };
const state: CertsState = (globalWithState[STATE_KEY] ??= { cache: new Map(), tempDir: undefined });

/** Generate (once per process, per `dir`) a CA, a server cert for localhost/127.0.0.1 and a client cert. */
export function makeCerts(dir?: string): Promise<Certs> {
  const target = dir ?? (state.tempDir ??= makeTempDir());
  let certs = state.cache.get(target);
  if (!certs) {
    certs = generate(target);
    // A failed generation should not be cached: the next call retries.
    certs.catch(() => state.cache.delete(target));
    state.cache.set(target, certs);
  }
  return certs;
}

function makeTempDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'token-sidecar-certs-'));
  // Only the temp dir we made ourselves is removed; a caller-supplied dir is the caller's.
  const remove = () => rmSync(dir, { recursive: true, force: true });
  process.once('exit', remove);
  // Vitest stops fork workers with SIGTERM, which skips 'exit' handlers: clean up, then die of the same
  // signal unless another listener (e.g. vitest's own in its main process) takes care of exiting.
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(signal, () => {
      remove();
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
  return dir;
}
