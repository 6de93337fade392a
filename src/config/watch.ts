/**
 * Hot reload. Polls the config file and every `fromFile` secret it references and reloads when their content
 * changes. Polling (not fs.watch) because Kubernetes updates ConfigMap and Secret volumes by swapping a `..data`
 * symlink, which inotify on the file itself never reports; one read of a few small files per second is nothing.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { loadConfigFile, type LoadResult } from './load.js';

export const RELOAD_POLL_MS = 1_000;

async function fingerprint(files: readonly string[]): Promise<string> {
  const hash = createHash('sha256');
  for (const file of files) {
    hash.update(file).update('\0');
    try {
      hash.update(await readFile(file));
    } catch (err) {
      hash.update(`missing:${(err as NodeJS.ErrnoException).code ?? ''}`);
    }
    hash.update('\0');
  }
  return hash.digest('hex');
}

export class ConfigWatcher {
  #files: string[];
  #last = '';
  #timer: NodeJS.Timeout | undefined;
  #busy: Promise<void> | undefined;

  constructor(
    private readonly configFile: string,
    secretFiles: readonly string[],
    private readonly onResult: (result: LoadResult) => void,
    private readonly intervalMs = RELOAD_POLL_MS,
  ) {
    this.#files = [configFile, ...secretFiles];
  }

  async start(): Promise<void> {
    this.#last = await fingerprint(this.#files);
    this.#timer = setInterval(() => void this.check(), this.intervalMs);
    this.#timer.unref();
  }

  /** Reload now if anything changed (or always, with `force`: SIGHUP). */
  check(force = false): Promise<void> {
    this.#busy ??= this.#check(force).finally(() => (this.#busy = undefined));
    return this.#busy;
  }

  async #check(force: boolean): Promise<void> {
    const current = await fingerprint(this.#files);
    if (!force && current === this.#last) return;
    this.#last = current;
    const result = await loadConfigFile(this.configFile);
    // Watch what the new config references (a rotated secret may live in a new file), and the config itself.
    this.#files = [this.configFile, ...result.files.filter((f) => f !== this.configFile)];
    this.#last = await fingerprint(this.#files);
    this.onResult(result);
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
