/**
 * Polling until a server-side state is final, with growing pauses: what
 * `signingRequests.wait` and `operations.wait` share.
 */

import { CLIENT_ERROR_CODES, connectionError, CustosError } from "./errors.js";
import { sleep } from "./retry.js";

/** How a wait polls. */
export interface PollOptions<T> {
  /** Give up after this long, in ms (a `wait_timeout` error). Default 10 minutes. */
  waitTimeoutMs?: number;
  /** The first pause between two polls, in ms. Default 250. */
  initialIntervalMs?: number;
  /** The longest pause between two polls, in ms. Default 5000. */
  maxIntervalMs?: number;
  /** Called with every state seen, final or not. */
  onUpdate?: (state: T) => void;
  /** Stops waiting. */
  signal?: AbortSignal;
}

/**
 * Calls `read` until `isFinal` holds for its answer. Pauses double from
 * `initialIntervalMs` up to `maxIntervalMs`, with ±20% jitter so that many
 * waiters do not poll in step.
 */
export async function pollUntil<T extends { status: string }>(
  what: string,
  read: () => Promise<T>,
  isFinal: (state: T) => boolean,
  options: PollOptions<T>,
): Promise<T> {
  const deadline = Date.now() + (options.waitTimeoutMs ?? 10 * 60 * 1000);
  const maxInterval = options.maxIntervalMs ?? 5000;
  let interval = options.initialIntervalMs ?? 250;
  for (;;) {
    const state = await read();
    options.onUpdate?.(state);
    if (isFinal(state)) {
      return state;
    }
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new CustosError({
        code: CLIENT_ERROR_CODES.waitTimeout,
        message: `${what} is still ${state.status}`,
        status: 0,
      });
    }
    try {
      await sleep(Math.min(remaining, interval * (0.8 + 0.4 * Math.random())), options.signal);
    } catch (reason) {
      throw connectionError(reason, `waiting for ${what}`, "aborted");
    }
    interval = Math.min(maxInterval, interval * 2);
  }
}
