/** Checks on config text that is echoed into problems or sent in requests. Pure. */

export interface UnsafeChar {
  /** `a line break (CR or LF)`, `a control character` or `a character outside Latin-1`. */
  what: string;
  index: number;
  codePoint: number;
}

function classify(codePoint: number, header: boolean): string | undefined {
  if (codePoint === 0x0a || codePoint === 0x0d) return 'a line break (CR or LF)';
  // HTAB is allowed: RFC 9110 §5.5 lets a field value carry it.
  if ((codePoint < 0x20 && codePoint !== 0x09) || codePoint === 0x7f) return 'a control character';
  // Node and undici refuse a header value with a code point above U+00FF.
  if (header && codePoint > 0xff) return 'a character outside Latin-1';
  return undefined;
}

const RANK = ['a line break (CR or LF)', 'a control character', 'a character outside Latin-1'];

/**
 * The character that keeps `text` out of a request header (`header`) or out of a client credential: the first line
 * break if there is one (the usual mistake: a secret file that ends in a blank line), else the first other control
 * character, else (headers only) the first character beyond Latin-1.
 */
export function findUnsafeChar(text: string, opts: { header: boolean }): UnsafeChar | undefined {
  let found: UnsafeChar | undefined;
  let index = 0;
  for (const char of text) {
    const codePoint = char.codePointAt(0) ?? 0;
    const what = classify(codePoint, opts.header);
    if (what !== undefined && (found === undefined || RANK.indexOf(what) < RANK.indexOf(found.what))) {
      found = { what, index, codePoint };
      if (RANK.indexOf(what) === 0) return found;
    }
    index += char.length;
  }
  return found;
}

/** `U+000D`. */
export function codePointName(codePoint: number): string {
  return `U+${codePoint.toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * A URL as it may appear in a problem: with any userinfo replaced by `***`, so a password (or a token used as the
 * user name) is never printed. A URL that parses is shown as parsed; text that does not parse loses everything up to
 * its last `@` after the scheme.
 */
export function redactUrl(text: string): string {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    return text.replace(/^([A-Za-z][A-Za-z0-9+.-]*:[\\/]*)?[\s\S]*@/, (_all, scheme: string | undefined) => `${scheme ?? ''}***@`);
  }
  if (!url.username && !url.password) return text;
  url.username = '';
  url.password = '';
  return url.href.replace('//', '//***@');
}
