/**
 * Every form in which a credential left this process, so none of them can come back in an error text: a token
 * endpoint that echoes what it received (its error_description, a proxy's error page) must not put a secret into a
 * log line, an app-visible problem body or the admin API. Pure.
 */

/** application/x-www-form-urlencoded for one value (RFC 6749 §2.3.1 asks for it before Basic encoding too). */
export function formEncode(value: string): string {
  return new URLSearchParams([['', value]]).toString().slice(1);
}

/** Shorter strings are not redacted: they would blank out ordinary words. */
const MIN_SECRET_CHARS = 4;

/**
 * The spellings of `secret` a receiver may echo: raw, form- and percent-encoded (either case of hex digits), and
 * base64 / base64url of it (a Basic credential's parts are base64 of `id:secret`, given in `basicPairs`).
 */
export function sentForms(secret: string, basicPairs: readonly string[] = []): string[] {
  const forms = new Set<string>();
  const add = (s: string) => {
    if (s.length >= MIN_SECRET_CHARS) forms.add(s);
  };
  for (const s of [secret, formEncode(secret), encodeURIComponent(secret)]) {
    add(s);
    add(s.replace(/%[0-9A-F]{2}/g, (h) => h.toLowerCase()));
  }
  for (const raw of [secret, formEncode(secret), ...basicPairs]) {
    const b = Buffer.from(raw);
    add(b.toString('base64'));
    add(b.toString('base64').replace(/=+$/, ''));
    add(b.toString('base64url'));
  }
  // Longest first: a form that contains another is removed whole.
  return [...forms].sort((a, b) => b.length - a.length);
}

/** `text` with every `forms` occurrence replaced by [redacted]. */
export function redact(text: string, forms: readonly string[]): string {
  let out = text;
  for (const form of forms) if (out.includes(form)) out = out.split(form).join('[redacted]');
  return out;
}
