import { pollUntil } from "../poll.js";
import type { PollOptions } from "../poll.js";
import type { RequestOptions, Transport } from "../transport.js";
import type { SigningRequest, SigningStatus } from "../types.js";

/** The statuses after which a signing request does not change. */
export const FINAL_SIGNING_STATUSES: readonly SigningStatus[] = ["signed", "rejected", "failed"];

/** How {@link SigningRequestsApi.wait} polls (and the options of each poll). */
export interface WaitOptions extends PollOptions<SigningRequest>, RequestOptions {}

/** `/api/v1/signing-requests`: the progress of signing and resharing requests. */
export class SigningRequestsApi {
  constructor(private readonly transport: Transport) {}

  /** A request's current state; `signature` and friends once `signed`. */
  async get(requestId: string, options?: RequestOptions): Promise<SigningRequest> {
    const answer = await this.transport.request<SigningRequest>({
      method: "GET",
      path: `/api/v1/signing-requests/${encodeURIComponent(requestId)}`,
      idempotent: true,
      options,
    });
    return answer.body;
  }

  /**
   * Polls until the request is `signed`, `rejected` or `failed` and answers
   * it (it does not throw for `rejected` or `failed`: look at `status` and
   * `error`). Pauses grow exponentially from `initialIntervalMs` to
   * `maxIntervalMs`, with jitter.
   *
   * @throws CustosError `wait_timeout` after `waitTimeoutMs`.
   */
  async wait(requestId: string, options: WaitOptions = {}): Promise<SigningRequest> {
    return pollUntil(
      `signing request ${requestId}`,
      () => this.get(requestId, options),
      (request) => FINAL_SIGNING_STATUSES.includes(request.status),
      options,
    );
  }
}
