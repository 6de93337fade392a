/**
 * Poll `fn` until it returns a truthy value (which is returned) or `timeoutMs` passes.
 * A throw from `fn` counts as "not yet": conditions such as "server answers PING" fail by throwing
 * until they hold. The last error is kept and reported on timeout, since it usually says why.
 * `signal` ends the wait early (rejecting with its reason), e.g. when the awaited process died.
 */
export async function waitUntil<T>(
  fn: () => T | Promise<T>,
  timeoutMs = 5_000,
  intervalMs = 50,
  description = 'condition',
  signal?: AbortSignal,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    signal?.throwIfAborted();
    try {
      // A single attempt that hangs (e.g. a TCP peer that accepts but never answers) must not outlive
      // the deadline or ignore the signal, so each attempt races both.
      const value = await raceAttempt(fn, deadline, signal);
      if (value) return value as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    signal?.throwIfAborted();
    if (Date.now() >= deadline) {
      const why = lastError === undefined ? '' : `: last error: ${lastError instanceof Error ? lastError.message : String(lastError)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}${why}`);
    }
    await new Promise<void>((resolve) => {
      const onAbort = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, Math.min(intervalMs, Math.max(0, deadline - Date.now())));
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

async function raceAttempt<T>(fn: () => T | Promise<T>, deadline: number, signal: AbortSignal | undefined): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(fn),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('attempt still pending at the deadline')), Math.max(0, deadline - Date.now()));
        onAbort = () => reject(signal?.reason);
        signal?.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}
