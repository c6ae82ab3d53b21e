/**
 * The HTTP transport every namespace uses: JSON in and out over the global
 * `fetch`, the bearer token, timeouts, retries and typed errors.
 *
 * Retry rules (each attempt's failure is looked at in turn):
 * - a connection that was refused or a name that did not resolve: the
 *   request never reached the server, so any call is retried;
 * - 429: Custos refuses before doing anything, so any call is retried
 *   (after `Retry-After` when given);
 * - other statuses in `retryStatuses` (5xx) and timeouts or resets: only
 *   calls that are safe to repeat (reads, transit operations, and signing or
 *   resharing, which carry an idempotency key) are retried;
 * - 401 when the client logs in with credentials (or takes its token from
 *   a function): one new login (or token) and one more attempt, not counted
 *   as a retry.
 */

import type { TokenManager } from "./auth.js";
import { connectionError, CustosConnectionError, CustosError, CLIENT_ERROR_CODES } from "./errors.js";
import { backoffDelay, resolveRetry, retryAfterMs, sleep } from "./retry.js";
import type { ResolvedRetryOptions, RetryOptions } from "./retry.js";

/** Options every SDK call accepts as its last argument. */
export interface RequestOptions {
  /** Give up after this many milliseconds per attempt (overrides the client's). */
  timeoutMs?: number;
  /** Aborts the call (and its retries). */
  signal?: AbortSignal;
  /** This call's retry policy (overrides the client's), or `false` for none. */
  retry?: RetryOptions | false;
  /** Extra request headers (for instance `x-custos-totp` on signing). */
  headers?: Record<string, string>;
}

/** A query string's values; arrays are sent comma-separated. */
export type QueryValue = string | number | boolean | readonly string[] | undefined;

/** One request as a namespace describes it. */
export interface RequestSpec {
  method: "GET" | "POST" | "PUT" | "DELETE";
  path: string;
  query?: Record<string, QueryValue>;
  body?: unknown;
  /**
   * Whether sending the request twice has the effect of sending it once
   * (reads; writes carrying an idempotency key): only such calls are
   * retried after a timeout or a 5xx.
   */
  idempotent: boolean;
  /** Whether to send the bearer token. Default true. */
  auth?: boolean;
  /** A timeout for this kind of call, when the client's default is too short. */
  defaultTimeoutMs?: number;
  options?: RequestOptions | undefined;
}

/** A successful answer. */
export interface Answer<T> {
  /** HTTP status (200, 201 or 202). */
  status: number;
  /** The parsed JSON body. */
  body: T;
  /** The server's `x-request-id`. */
  requestId: string | undefined;
}

/** What the transport needs from the client. */
export interface TransportConfig {
  baseUrl: string;
  fetch: typeof globalThis.fetch;
  timeoutMs: number;
  retry: ResolvedRetryOptions;
  headers: Record<string, string>;
  tokens: TokenManager;
  random: () => number;
}

/** Sends requests to one Custos control plane. */
export class Transport {
  constructor(readonly config: TransportConfig) {}

  /** Sends `spec` (with retries) and answers its parsed body. */
  async request<T>(spec: RequestSpec): Promise<Answer<T>> {
    const retry = spec.options?.retry === false
      ? { ...this.config.retry, maxRetries: 0 }
      : spec.options?.retry === undefined
        ? this.config.retry
        : resolveRetry({ ...this.config.retry, ...spec.options.retry });
    let retries = 0;
    let reloggedIn = false;
    for (;;) {
      const token = spec.auth === false ? undefined : await this.config.tokens.token();
      let delay: number;
      try {
        return await this.attempt<T>(spec, token);
      } catch (error) {
        if (!(error instanceof CustosError)) {
          throw error;
        }
        if (error.status === 401 && token !== undefined && this.config.tokens.canRefresh && !reloggedIn) {
          // The token expired early or was revoked: log in again, once.
          this.config.tokens.invalidate(token);
          reloggedIn = true;
          continue;
        }
        if (retries >= retry.maxRetries || !isRetryable(error, spec.idempotent, retry)) {
          throw error;
        }
        delay = backoffDelay(retries, retry, this.config.random);
        if (error.retryAfterMs !== undefined) {
          delay = Math.max(delay, Math.min(error.retryAfterMs, 60_000));
        }
      }
      retries += 1;
      try {
        await sleep(delay, spec.options?.signal);
      } catch (reason) {
        throw connectionError(reason, describe(spec), "aborted");
      }
    }
  }

  private url(spec: RequestSpec): string {
    // Relative to the base URL, so that a path prefix (https://host/custos/) stays.
    const url = new URL(spec.path.replace(/^\/+/, ""), this.config.baseUrl);
    for (const [name, value] of Object.entries(spec.query ?? {})) {
      if (value === undefined) {
        continue;
      }
      url.searchParams.set(name, Array.isArray(value) ? value.join(",") : String(value));
    }
    return url.toString();
  }

  /** One attempt: answers the body or throws a {@link CustosError}. */
  private async attempt<T>(spec: RequestSpec, token: string | undefined): Promise<Answer<T>> {
    const headers: Record<string, string> = {
      accept: "application/json",
      ...this.config.headers,
      ...spec.options?.headers,
    };
    if (spec.body !== undefined) {
      headers["content-type"] = "application/json";
    }
    if (token !== undefined) {
      headers.authorization = `Bearer ${token}`;
    }
    const timeoutMs = spec.options?.timeoutMs ?? Math.max(this.config.timeoutMs, spec.defaultTimeoutMs ?? 0);
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const callerSignal = spec.options?.signal;
    const onCallerAbort = (): void => controller.abort();
    if (callerSignal?.aborted) {
      controller.abort();
    }
    callerSignal?.addEventListener("abort", onCallerAbort, { once: true });
    let response: Response;
    let text: string;
    try {
      response = await this.config.fetch(this.url(spec), {
        method: spec.method,
        headers,
        body: spec.body === undefined ? undefined : JSON.stringify(spec.body),
        signal: controller.signal,
      });
      text = await response.text();
    } catch (error) {
      const reason = timedOut ? "timeout" : callerSignal?.aborted ? "aborted" : "network";
      throw connectionError(error, describe(spec), reason);
    } finally {
      clearTimeout(timer);
      callerSignal?.removeEventListener("abort", onCallerAbort);
    }
    const requestId = response.headers.get("x-request-id") ?? undefined;
    const body = parseJson(text);
    if (response.ok) {
      if (body === INVALID) {
        throw new CustosError({
          code: CLIENT_ERROR_CODES.invalidResponse,
          message: `${describe(spec)}: the answer is not JSON`,
          status: response.status,
          requestId,
        });
      }
      return { status: response.status, body: body as T, requestId };
    }
    throw errorFromAnswer(response, body, requestId, spec);
  }
}

const INVALID = Symbol("invalid JSON");

function parseJson(text: string): unknown {
  if (text.trim() === "") {
    return undefined;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return INVALID;
  }
}

function describe(spec: RequestSpec): string {
  return `${spec.method} ${spec.path}`;
}

/** The {@link CustosError} of an error answer (`{"error": {code, message, requestId}}`). */
function errorFromAnswer(
  response: Response,
  body: unknown,
  headerRequestId: string | undefined,
  spec: RequestSpec,
): CustosError {
  const error = typeof body === "object" && body !== null ? (body as { error?: unknown }).error : undefined;
  const fields = typeof error === "object" && error !== null ? (error as Record<string, unknown>) : {};
  const code = typeof fields.code === "string" ? fields.code : fallbackCode(response.status);
  const message = typeof fields.message === "string"
    ? fields.message
    : `${describe(spec)} answered ${response.status} ${response.statusText}`.trim();
  const requestId = typeof fields.requestId === "string" && fields.requestId !== "" ? fields.requestId : headerRequestId;
  return new CustosError({
    code,
    message,
    status: response.status,
    requestId,
    retryAfterMs: retryAfterMs(response.headers.get("retry-after")),
  });
}

function fallbackCode(status: number): string {
  if (status === 401) return "unauthenticated";
  if (status === 403) return "forbidden";
  if (status === 404) return "not_found";
  if (status === 429) return "rate_limited";
  if (status >= 500) return "internal";
  return "bad_request";
}

/** Whether a failed attempt may be sent again (see the module comment). */
export function isRetryable(error: CustosError, idempotent: boolean, retry: ResolvedRetryOptions): boolean {
  if (error instanceof CustosConnectionError) {
    if (error.code === CLIENT_ERROR_CODES.aborted) {
      return false;
    }
    return error.notSent || idempotent;
  }
  if (!retry.retryStatuses.includes(error.status)) {
    return false;
  }
  return error.status === 429 || idempotent;
}
