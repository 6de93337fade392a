/**
 * What no log line of the sidecar may ever contain, whatever a test did to it. The patterns match the shapes of the
 * credentials the suite's servers hand out and receive: fake-idp access tokens, any JWS (client assertions, DPoP
 * proofs, JWT access tokens), PEM private keys, HTTP Basic credentials, and the fixed test secrets.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export const LEAK_PATTERNS: readonly { name: string; re: RegExp }[] = [
  { name: 'fake-idp access token', re: /tsk_[A-Za-z0-9_-]{24}/ },
  { name: 'JWS / JWT', re: /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/ },
  { name: 'PEM private key', re: /-----BEGIN [A-Z ]*PRIVATE KEY-----/ },
  { name: 'HTTP Basic credentials', re: /Basic [A-Za-z0-9+/]{16,}={0,2}/ },
  { name: 'a fixed test secret', re: /St4ck-Test-Secret-9102|fleet-secret-1234/ },
];

export interface Leak {
  file: string;
  line: number;
  pattern: string;
}

/** Every leak in the run's log files: where and which pattern, never the matched text itself. */
export function scanLogDir(dir: string): { files: number; lines: number; leaks: Leak[] } {
  const leaks: Leak[] = [];
  let files = 0;
  let lines = 0;
  for (const name of readdirSync(dir)) {
    files++;
    const text = readFileSync(join(dir, name), 'utf8').split('\n');
    lines += text.length;
    text.forEach((line, i) => {
      for (const p of LEAK_PATTERNS) if (p.re.test(line)) leaks.push({ file: name, line: i + 1, pattern: p.name });
    });
  }
  return { files, lines, leaks };
}
