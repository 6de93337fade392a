import { inspect } from 'node:util';

/**
 * A secret value (client secret, token, key). It prints as `[redacted]` through every path a value can take to a
 * log or an error body (String(), JSON, util.inspect, pino), so only `reveal()` ever yields the text.
 */
export class Secret {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return '[redacted]';
  }

  toJSON(): string {
    return '[redacted]';
  }

  [inspect.custom](): string {
    return 'Secret([redacted])';
  }
}
