/**
 * Hot reload. Polls the config file and every `fromFile` secret it references and reloads when their content
 * changes. Polling (not fs.watch) because Kubernetes updates ConfigMap and Secret volumes by swapping a `..data`
 * symlink, which inotify on the file itself never reports; one read of a few small files per second is nothing (and
 * every read is bounded, as the load's: see readFileDigest).
 */
import { dirname, resolve } from 'node:path';
import { Secret } from '../core/secret.js';
import { CONFIG_FILE_MAX_BYTES, readFileDigest, SECRET_FILE_MAX_BYTES, UNSETTLED_DIGEST, type FileDigests } from './files.js';
import { errorText, loadConfigSource, loadConfigText, mergeDigests, type LoadResult } from './load.js';
import type { Config } from './types.js';

export const RELOAD_POLL_MS = 1_000;

export interface ConfigWatcherOptions {
  /**
   * The load the caller is serving. start() then compares its digests with what is on disk, so a change made
   * between that load and start() is delivered instead of being taken as the starting point.
   */
  initial?: LoadResult | undefined;
  env?: NodeJS.ProcessEnv | undefined;
  /** The loader (default loadConfigSource): handed in so a test can act between a load and what follows it. */
  load?: ((file: string, env?: NodeJS.ProcessEnv) => ReturnType<typeof loadConfigSource>) | undefined;
}

/** The last config that loaded, kept to re-read it with a rotated secret while the file on disk is broken. */
interface GoodSource {
  text: string;
  baseDir: string;
  config: Config;
  /** What its latest load read of each secret file (not of the config file: that may be the broken one now). */
  secretDigests: FileDigests;
}

type Failed = Extract<LoadResult, { ok: false }>;

export class ConfigWatcher {
  /** What the loads behind the current state read of each watched file; a poll reloads when the disk differs. */
  #seen: FileDigests = new Map();
  #good: GoodSource | undefined;
  /** The last internal error reported, so a load that keeps throwing is retried every poll but reported once. */
  #lastError: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  #busy: Promise<void> | undefined;

  constructor(
    private readonly configFile: string,
    private readonly secretFiles: readonly string[],
    private readonly onResult: (result: LoadResult) => void,
    private readonly intervalMs = RELOAD_POLL_MS,
    private readonly options: ConfigWatcherOptions = {},
  ) {}

  async start(): Promise<void> {
    await this.#baseline();
    this.#timer = setInterval(() => void this.check(), this.intervalMs);
    this.#timer.unref();
  }

  /** Reload now if anything changed (or always, with `force`: SIGHUP). Never rejects. */
  check(force = false): Promise<void> {
    this.#busy ??= this.#check(force).finally(() => (this.#busy = undefined));
    return this.#busy;
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** Load once, delivering only what differs from what the caller serves. */
  async #baseline(): Promise<void> {
    const initial = this.options.initial;
    // Without the caller's load, take a good load as the one it serves (it only starts on a good config).
    await this.#reload((result) => (initial ? !sameDigests(initial.digests, result.digests) : !result.ok));
    // A file the caller's load read and this one did not: the config changed in between, so reload on the first
    // poll. (After a throw nothing is seen and the first poll reloads anyway.)
    const seen = new Map(this.#seen);
    for (const file of [this.configFile, ...this.secretFiles]) if (!seen.has(file)) seen.set(file, UNSETTLED_DIGEST);
    this.#seen = seen;
  }

  async #check(force: boolean): Promise<void> {
    let changed: boolean;
    try {
      changed = force || (await this.#changed());
    } catch (err) {
      this.#report(err, undefined);
      return;
    }
    if (changed) await this.#reload(() => true);
  }

  /** Never throws: an unhandled rejection from the poll would end the process. Reports instead, and polling goes on. */
  async #reload(deliver: (result: LoadResult) => boolean): Promise<void> {
    let delivering: LoadResult | undefined;
    try {
      const { result, text } = await (this.options.load ?? loadConfigSource)(this.configFile, this.options.env);
      const next = await this.#settle(result, text);
      if (!deliver(result)) return;
      delivering = next;
      this.#lastError = undefined;
      this.onResult(next);
    } catch (err) {
      this.#report(err, delivering);
    }
  }

  async #changed(): Promise<boolean> {
    for (const [file, digest] of this.#seen) if ((await this.#digestOf(file)) !== digest) return true;
    return false;
  }

  /**
   * With the load's own bound, so a poll sees the digest the load recorded: a file over its cap (or not a regular
   * file) is only stat'ed, poll after poll, never read.
   */
  async #digestOf(file: string): Promise<string> {
    return (await readFileDigest(file, file === this.configFile ? CONFIG_FILE_MAX_BYTES : SECRET_FILE_MAX_BYTES)).digest;
  }

  /** Take in a load of the file on disk: update what is seen and the last good source; return what to deliver. */
  async #settle(result: LoadResult, text: string): Promise<LoadResult> {
    if (result.ok) {
      this.#good = {
        text,
        baseDir: dirname(resolve(this.configFile)),
        config: result.config,
        secretDigests: new Map([...result.digests].filter(([file]) => file !== this.configFile)),
      };
      this.#seen = result.digests;
      return result;
    }
    const reread = await this.#rereadGood(result);
    // Keep watching the last good config's secrets too: one may rotate while the file stays broken.
    this.#seen = mergeDigests(reread?.digests ?? this.#good?.secretDigests ?? new Map(), result.digests);
    return reread ?? result;
  }

  /** The file on disk does not load: if a secret of the last good config changed, re-read that config with it. */
  async #rereadGood(failed: Failed): Promise<LoadResult | undefined> {
    const good = this.#good;
    if (!good) return undefined;
    const changed: string[] = [];
    for (const [file, digest] of good.secretDigests) if ((await this.#digestOf(file)) !== digest) changed.push(file);
    if (changed.length === 0) return undefined;
    const again = await loadConfigText(good.text, { env: this.options.env, baseDir: good.baseDir, fileName: this.configFile });
    if (!again.ok) {
      // Keep the old digests in #good, so the next change of these files tries again.
      const why = again.problems.map((p) => `the last good config with the changed secret file(s): ${p}`);
      return { ok: false, problems: [...failed.problems, ...why], files: [...failed.files, ...again.files], digests: again.digests };
    }
    this.#good = { ...good, config: again.config, secretDigests: again.digests };
    const n = failed.problems.length;
    const broken = `${this.configFile}: still does not load (${n} problem${n === 1 ? '' : 's'}: ${failed.problems[0] ?? ''})`;
    const warning = `${broken}; re-read the last good config with the changed secret file(s) ${changed.join(', ')}`;
    return { ...again, warnings: [...again.warnings, warning] };
  }

  #report(err: unknown, delivering: LoadResult | undefined): void {
    const what = delivering ? 'the reload callback failed' : 'reload failed';
    const problem = `${this.configFile}: ${what}: ${this.#errorText(err, delivering)}`;
    if (!delivering && problem === this.#lastError) return;
    this.#lastError = problem;
    try {
      this.onResult({ ok: false, problems: [problem], files: [...this.#seen.keys()], digests: this.#seen });
    } catch {
      // The callback throws on the report too: nothing is left to tell it, and the next poll goes on.
    }
  }

  /** The error's text without any secret value of the configs at hand (an error may quote what it failed on). */
  #errorText(err: unknown, delivering: LoadResult | undefined): string {
    const secrets = new Set<string>();
    if (delivering?.ok) secretValues(delivering.config, secrets);
    if (this.#good) secretValues(this.#good.config, secrets);
    // Longest first, so a secret that contains another is not left half shown.
    const longestFirst = [...secrets].sort((a, b) => b.length - a.length);
    return errorText(err, (text) => longestFirst.reduce((out, value) => out.replaceAll(value, '[redacted]'), text));
  }
}

function sameDigests(a: FileDigests, b: FileDigests): boolean {
  return a.size === b.size && [...a].every(([file, digest]) => b.get(file) === digest);
}

function secretValues(node: unknown, out: Set<string>): void {
  if (node instanceof Secret) {
    const value = node.reveal();
    if (value) out.add(value);
  } else if (Buffer.isBuffer(node)) {
    // Store encryption keys: written in the file as base64.
    if (node.length > 0) out.add(node.toString('base64'));
  } else if (Array.isArray(node)) {
    for (const v of node) secretValues(v, out);
  } else if (typeof node === 'object' && node !== null && Object.getPrototypeOf(node) === Object.prototype) {
    for (const v of Object.values(node)) secretValues(v, out);
  }
}
