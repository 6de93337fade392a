/**
 * Bounded reads of the files a config names (routes.yaml and every `fromFile`), with a digest of exactly the bytes
 * read: what the loader parses and what the watcher compares the disk with.
 */
import { createHash } from 'node:crypto';
import { constants, type Stats } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';

/**
 * What a load read of each file, by path: a digest of the very bytes it parsed, so a watcher that compares the disk
 * with these sees every change made after the read (re-reading the disk afterwards would miss one made in between).
 */
export type FileDigests = ReadonlyMap<string, string>;

/** A load that read the same file twice and saw two contents: equal to no digest, so a watcher reloads. */
export const UNSETTLED_DIGEST = 'unsettled';

/**
 * Largest routes.yaml read: a route is ~250 bytes, so thousands fit. Parsing is what it bounds: the YAML library
 * holds ~250 bytes per byte of a dense file (a 4 MiB one took 1 GB before any check could run).
 */
export const CONFIG_FILE_MAX_BYTES = 1024 * 1024;
/** Largest `fromFile` read (secrets, keys, certificates and CA bundles). */
export const SECRET_FILE_MAX_BYTES = 1024 * 1024;

export type FileRead =
  | { digest: string; content: Buffer }
  | { digest: string; content: undefined; refusal: FileRefusal };

export type FileRefusal =
  | { kind: 'error'; code: string }
  | { kind: 'not-regular'; what: string }
  | { kind: 'too-large'; sizeBytes: number; maxBytes: number };

/**
 * One read of a file, with the digest of exactly those bytes (or of why it was not read). Only a regular file (after
 * symlinks, which Kubernetes volumes are made of) of at most `maxBytes` is read: a device, a FIFO or a huge file would
 * block or eat memory, at load and again at every watcher poll.
 */
export async function readFileDigest(file: string, maxBytes: number): Promise<FileRead> {
  let fh: FileHandle | undefined;
  try {
    // stat before open: a FIFO is never opened (even non-blocking, opening it would meet a writer).
    const refused = refusal(await stat(file), maxBytes);
    if (refused) return refused;
    // O_NONBLOCK: should the path become a FIFO between stat and open, the open does not wait for a writer.
    fh = await open(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
    const st = await fh.stat();
    const changed = refusal(st, maxBytes);
    if (changed) return changed;
    const content = await readAtMost(fh, st.size, maxBytes);
    if (!content) return tooLarge(st, maxBytes, maxBytes + 1);
    return { digest: createHash('sha256').update(content).digest('hex'), content };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    return { digest: `missing:${code}`, content: undefined, refusal: { kind: 'error', code } };
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

function refusal(st: Stats, maxBytes: number): FileRead | undefined {
  if (!st.isFile()) {
    const what = st.isDirectory() ? 'a directory'
      : st.isFIFO() ? 'a FIFO'
      : st.isCharacterDevice() ? 'a character device'
      : st.isBlockDevice() ? 'a block device'
      : st.isSocket() ? 'a socket'
      : 'not a file';
    return { digest: `refused:${what}`, content: undefined, refusal: { kind: 'not-regular', what } };
  }
  return st.size > maxBytes ? tooLarge(st, maxBytes, st.size) : undefined;
}

/** Stable while the file stays as it is, so a poll sees no change; new when it is replaced or written. */
function tooLarge(st: Stats, maxBytes: number, sizeBytes: number): FileRead {
  return {
    digest: `refused:too-large:${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`,
    content: undefined,
    refusal: { kind: 'too-large', sizeBytes, maxBytes },
  };
}

/** The file's bytes, or undefined when it holds more than `maxBytes` (it may have grown since fstat). */
async function readAtMost(fh: FileHandle, sizeHintBytes: number, maxBytes: number): Promise<Buffer | undefined> {
  let buffer = Buffer.allocUnsafe(Math.min(sizeHintBytes, maxBytes) + 1);
  let length = 0;
  for (;;) {
    if (length === buffer.length) {
      if (length > maxBytes) return undefined;
      const grown = Buffer.allocUnsafe(Math.min(buffer.length * 2, maxBytes + 1));
      buffer.copy(grown, 0, 0, length);
      buffer = grown;
    }
    const { bytesRead } = await fh.read(buffer, length, buffer.length - length, null);
    if (bytesRead === 0) break;
    length += bytesRead;
  }
  return length > maxBytes ? undefined : buffer.subarray(0, length);
}

function mib(bytes: number): string {
  return `${bytes / (1024 * 1024)} MiB`;
}

/** The problem text for a file that was not read; `name` is how the config names it (none for routes.yaml itself). */
export function unreadable(r: FileRefusal, name: string | undefined, limitOf: string): string {
  const subject = name === undefined ? '' : `${name} is `;
  if (r.kind === 'error') return name === undefined ? `cannot read (${r.code})` : `cannot read ${name} (${r.code})`;
  if (r.kind === 'not-regular') return `${subject}not a regular file (${r.what})`;
  return `${subject}${r.sizeBytes} bytes, over the ${mib(r.maxBytes)} limit of ${limitOf}`;
}
