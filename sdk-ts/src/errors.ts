/**
 * Errors the SDK throws. Every failure is a {@link CustosError}: the server's
 * own errors carry its stable `code`, the HTTP `status` and the `requestId`
 * the server logged them under; failures to reach the server are
 * {@link CustosConnectionError}s (status 0).
 */

/** Codes the SDK itself uses (the server's codes are snake_case strings too). */
export const CLIENT_ERROR_CODES = {
  /** The server could not be reached (refused, reset, DNS, TLS). */
  connectionFailed: "connection_failed",
  /** No answer within the request's timeout. */
  timeout: "timeout",
  /** The caller aborted the request through its `AbortSignal`. */
  aborted: "aborted",
  /** The server answered something that is not the expected JSON. */
  invalidResponse: "invalid_response",
  /** `signingRequests.wait` gave up before the request reached a final status. */
  waitTimeout: "wait_timeout",
  /** A secret could not be fetched and no usable cached value exists. */
  secretUnavailable: "secret_unavailable",
} as const;

/** Fields of a {@link CustosError}. */
export interface CustosErrorInit {
  /** Stable snake_case code (the server's, or one of {@link CLIENT_ERROR_CODES}). */
  code: string;
  /** Human-readable message; never contains a secret. */
  message: string;
  /** HTTP status; 0 when no answer was received. */
  status: number;
  /** The server's request id (`x-request-id`), when an answer was received. */
  requestId?: string | undefined;
  /** How long the server asked to wait before trying again (`Retry-After`), in ms. */
  retryAfterMs?: number | undefined;
  /** What went wrong underneath (a network error, for instance). */
  cause?: unknown;
}

/**
 * An error answered by Custos (`{"error": {code, message, requestId}}`) or
 * met on the way to it.
 *
 * Match on `code`, which is stable; `message` is for people.
 *
 * @example
 * try {
 *   await custos.transit.decrypt({ keyName: "payments", ciphertext });
 * } catch (error) {
 *   if (error instanceof CustosError && error.code === "not_found") { ... }
 * }
 */
export class CustosError extends Error {
  /** Stable snake_case code. */
  readonly code: string;
  /** HTTP status; 0 when no answer was received. */
  readonly status: number;
  /** The server's request id, to find the operator's log line. */
  readonly requestId: string | undefined;
  /** How long the server asked to wait before trying again, in ms (429, 503). */
  readonly retryAfterMs: number | undefined;

  constructor(init: CustosErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "CustosError";
    this.code = init.code;
    this.status = init.status;
    this.requestId = init.requestId;
    this.retryAfterMs = init.retryAfterMs;
  }

  /** Whether the server answered 401 (a token missing, expired or revoked). */
  get isUnauthenticated(): boolean {
    return this.status === 401;
  }

  /** Whether the failure means the server could not be reached or could not serve. */
  get isUnavailable(): boolean {
    return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
  }

  override toString(): string {
    const where = this.requestId ? ` [request ${this.requestId}]` : "";
    return `${this.name}: ${this.code} (${this.status}): ${this.message}${where}`;
  }
}

/**
 * The server could not be reached or did not answer in time: status 0,
 * code `connection_failed`, `timeout` or `aborted`.
 */
export class CustosConnectionError extends CustosError {
  /**
   * Whether the request certainly never reached the server (connection
   * refused, DNS failure): such a request is safe to send again whatever it
   * does.
   */
  readonly notSent: boolean;

  constructor(init: Omit<CustosErrorInit, "status"> & { notSent: boolean }) {
    super({ ...init, status: 0 });
    this.name = "CustosConnectionError";
    this.notSent = init.notSent;
  }
}

/** Network error codes that mean the request was never sent. */
const NOT_SENT_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** The `code` of a Node network error, looking through `cause` chains. */
function networkCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current !== null && typeof current === "object"; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === "string") {
      return code;
    }
    // AggregateError (happy eyeballs: IPv4 and IPv6 both refused).
    const errors = (current as { errors?: unknown }).errors;
    if (Array.isArray(errors) && errors.length > 0) {
      current = errors[0];
      continue;
    }
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Turns what `fetch` threw into a {@link CustosConnectionError}. */
export function connectionError(
  error: unknown,
  what: string,
  reason: "timeout" | "aborted" | "network",
): CustosConnectionError {
  if (reason === "timeout") {
    return new CustosConnectionError({
      code: CLIENT_ERROR_CODES.timeout,
      message: `${what}: no answer in time`,
      notSent: false,
      cause: error,
    });
  }
  if (reason === "aborted") {
    return new CustosConnectionError({
      code: CLIENT_ERROR_CODES.aborted,
      message: `${what}: aborted by the caller`,
      notSent: false,
      cause: error,
    });
  }
  const code = networkCode(error);
  const detail = code ?? (error instanceof Error ? error.message : String(error));
  return new CustosConnectionError({
    code: CLIENT_ERROR_CODES.connectionFailed,
    message: `${what}: cannot reach the server (${detail})`,
    notSent: code !== undefined && NOT_SENT_CODES.has(code),
    cause: error,
  });
}
