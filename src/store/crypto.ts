/**
 * AES-256-GCM for cached tokens (node:crypto). The first key seals, every key opens (rotation). A fresh 12-byte IV
 * per value; the tag length is always passed, because Node 20 otherwise accepts a truncated tag (NIST SP 800-38D
 * allows short tags only by explicit choice).
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

const IV_BYTES = 12;
const TAG_BYTES = 16;

export interface Sealed {
  kid: string;
  iv: string;
  ct: string;
  tag: string;
}

export class Keyring {
  readonly #keys: ReadonlyMap<string, Buffer>;
  readonly #current: { id: string; key: Buffer };

  constructor(keys: readonly { id: string; key: Buffer }[]) {
    const first = keys[0];
    if (!first) throw new Error('a keyring needs at least one key');
    for (const k of keys) if (k.key.length !== 32) throw new Error(`key ${k.id} is not 32 bytes`);
    this.#current = first;
    this.#keys = new Map(keys.map((k) => [k.id, k.key]));
  }

  seal(plaintext: string, aad: string): Sealed {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#current.key, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(Buffer.from(aad, 'utf8'));
    const ct = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
    return { kid: this.#current.id, iv: iv.toString('base64'), ct: ct.toString('base64'), tag: cipher.getAuthTag().toString('base64') };
  }

  /** Whether a value sealed under `kid` can be opened here. */
  has(kid: string): boolean {
    return this.#keys.has(kid);
  }

  /** The plaintext, or undefined for an unknown key id, a wrong key, a tampered value or a malformed envelope. */
  open(sealed: Sealed, aad: string): string | undefined {
    const key = this.#keys.get(sealed.kid);
    if (!key) return undefined;
    const iv = Buffer.from(sealed.iv, 'base64');
    const tag = Buffer.from(sealed.tag, 'base64');
    if (iv.length !== IV_BYTES || tag.length !== TAG_BYTES) return undefined;
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
      decipher.setAAD(Buffer.from(aad, 'utf8'));
      decipher.setAuthTag(tag);
      return Buffer.concat([decipher.update(Buffer.from(sealed.ct, 'base64')), decipher.final()]).toString('utf8');
    } catch {
      return undefined;
    }
  }
}
