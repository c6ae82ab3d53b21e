/**
 * Retry policy: exponential backoff with full jitter (the delay before retry
 * `n` is uniform in `[0, min(maxDelayMs, baseDelayMs * 2^n))`), so that many
 * clients failing together do not come back together.
 */

/** How the client retries failed requests. */
export interface RetryOptions {
  /** Retries after the first attempt (0 turns retrying off). Default 3. */
  maxRetries?: number;
  /** The backoff's base delay, in milliseconds. Default 200. */
  baseDelayMs?: number;
  /** The largest delay between two attempts, in milliseconds. Default 5000. */
  maxDelayMs?: number;
  /** Retry answers with these HTTP statuses. Default 429, 500, 502, 503, 504. */
  retryStatuses?: readonly number[];
}

/** {@link RetryOptions} with every default filled in. */
export type ResolvedRetryOptions = Required<RetryOptions>;

/** The defaults of {@link RetryOptions}. */
export const DEFAULT_RETRY: ResolvedRetryOptions = {
  maxRetries: 3,
  baseDelayMs: 200,
  maxDelayMs: 5000,
  retryStatuses: [429, 500, 502, 503, 504],
};

/** Fills in the defaults. */
export function resolveRetry(options: RetryOptions | undefined): ResolvedRetryOptions {
  return { ...DEFAULT_RETRY, ...stripUndefined(options ?? {}) };
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(
    Object.entries(value).filter(([, field]) => field !== undefined),
  ) as Partial<T>;
}

/**
 * The delay before retry number `retry` (0 for the first retry): full
 * jitter over an exponentially growing, capped window. `random` returns a
 * number in `[0, 1)`.
 */
export function backoffDelay(
  retry: number,
  options: Pick<ResolvedRetryOptions, "baseDelayMs" | "maxDelayMs">,
  random: () => number = Math.random,
): number {
  const window = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** retry);
  return Math.floor(random() * window);
}

/**
 * The delay a `Retry-After` header asks for, in milliseconds (seconds or an
 * HTTP date), or undefined when absent or unreadable.
 */
export function retryAfterMs(header: string | null, now: number = Date.now()): number | undefined {
  if (header === null || header.trim() === "") {
    return undefined;
  }
  const seconds = Number(header);
  if (Number.isFinite(seconds) && seconds >= 0) {
    return seconds * 1000;
  }
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Waits `ms` milliseconds, or rejects with the signal's reason when aborted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
