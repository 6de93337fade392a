/** Secret references (`{ fromEnv }`, `{ fromFile }`, literals) resolved for one load, with every problem collected. */
import { isAbsolute, resolve } from 'node:path';
import { Secret } from '../core/secret.js';
import type { RawTls, SecretRef } from './primitives.js';
import type { TlsMaterial } from './types.js';
import { readFileDigest, SECRET_FILE_MAX_BYTES, unreadable, UNSETTLED_DIGEST } from './files.js';
import { findUnsafeChar } from './text.js';

export function noteDigest(digests: Map<string, string>, file: string, digest: string): void {
  const seen = digests.get(file);
  digests.set(file, seen === undefined || seen === digest ? digest : UNSETTLED_DIGEST);
}

/**
 * `header`: sent in a request header as it is (a static value), so it must be a valid field value. `credential`: a
 * client id or secret; a line break or control character there is never part of it (a file saved with a blank line
 * at its end) and would only come back as TOKEN_REJECTED.
 */
export type SecretUse = 'header' | 'credential';

export class SecretResolver {
  readonly problems: string[] = [];
  readonly warnings: string[] = [];
  readonly files: string[] = [];
  readonly digests = new Map<string, string>();

  constructor(
    private readonly env: NodeJS.ProcessEnv,
    readonly baseDir: string,
  ) {}

  async get(ref: SecretRef, path: string, opts: { literalWarning?: boolean; use?: SecretUse | undefined } = {}): Promise<string> {
    if (typeof ref === 'string') {
      if (opts.literalWarning) this.warnings.push(`${path}: a literal value in the config file; prefer fromEnv or fromFile`);
      this.#checkUse(ref, path, '', opts.use);
      return ref;
    }
    if ('fromEnv' in ref) {
      const value = this.env[ref.fromEnv];
      if (value === undefined || value === '') this.problems.push(`${path}: environment variable ${ref.fromEnv} is not set`);
      else this.#checkUse(value, path, `environment variable ${ref.fromEnv} `, opts.use);
      return value ?? '';
    }
    const file = isAbsolute(ref.fromFile) ? ref.fromFile : resolve(this.baseDir, ref.fromFile);
    this.files.push(file);
    const read = await readFileDigest(file, SECRET_FILE_MAX_BYTES);
    noteDigest(this.digests, file, read.digest);
    if (read.content === undefined) {
      this.problems.push(`${path}: ${unreadable(read.refusal, ref.fromFile, 'a secret or certificate file')}`);
      return '';
    }
    // Secret files made with `echo` end in a newline that is not part of the secret (one: a second one is a mistake).
    const value = read.content.toString('utf8').replace(/\r?\n$/, '');
    if (value === '') this.problems.push(`${path}: ${ref.fromFile} is empty`);
    else this.#checkUse(value, path, `${ref.fromFile} `, opts.use, ' after its one trailing newline');
    return value;
  }

  /** Names the character class, never the value: this is a secret. */
  #checkUse(value: string, path: string, source: string, use: SecretUse | undefined, afterNewline = ''): void {
    if (!use) return;
    const bad = findUnsafeChar(value, { header: use === 'header' });
    if (!bad) return;
    const after = bad.what.startsWith('a line break') ? afterNewline : '';
    const why = use === 'header' ? 'a header value cannot carry it' : 'a client credential cannot carry it';
    this.problems.push(`${path}: ${source}contains ${bad.what}${after}; ${why}`);
  }

  async secret(ref: SecretRef, path: string, literalWarning = true, use?: SecretUse): Promise<Secret> {
    return new Secret(await this.get(ref, path, { literalWarning, use }));
  }

  async tls(raw: RawTls | undefined, path: string): Promise<TlsMaterial | undefined> {
    if (!raw) return undefined;
    const [ca, cert, key] = await Promise.all([
      raw.ca === undefined ? undefined : this.get(raw.ca, `${path}.ca`),
      raw.cert === undefined ? undefined : this.get(raw.cert, `${path}.cert`),
      raw.key === undefined ? undefined : this.secret(raw.key, `${path}.key`),
    ]);
    if ((cert === undefined) !== (key === undefined)) this.problems.push(`${path}: cert and key go together`);
    return { ca: ca || undefined, cert: cert || undefined, key, servername: raw.servername };
  }
}

