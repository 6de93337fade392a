/**
 * Ids for requests that arrive without an `x-request-id`. Each is an RFC 9562 §5.8 UUIDv8 ("custom"): 62 bits
 * chosen at random once per process, then a 48-bit counter. Ids are unique across a fleet without a random draw
 * per request (`crypto.randomUUID()` cost a measurable share of a forwarded request's allocations); they name a
 * request, they are not secrets, so predictability within one process is harmless.
 */
import { randomBytes } from 'node:crypto';

export function requestIdGenerator(random: Buffer = randomBytes(8)): () => string {
  const hex = random.toString('hex').padEnd(16, '0');
  // Version 8 in the 13th hex digit; variant 0b10 in the top bits of the 17th.
  const variant = ((parseInt(hex[12] ?? '0', 16) & 0x3) | 0x8).toString(16);
  const prefix = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-8${hex.slice(13, 16)}-${variant}`;
  let counter = 0;
  return () => {
    counter = counter >= 0xffff_ffff_ffff ? 0 : counter + 1;
    const c = counter.toString(16).padStart(15, '0');
    return `${prefix}${c.slice(0, 3)}-${c.slice(3)}`;
  };
}
