import { pollUntil } from "../poll.js";
import type { PollOptions } from "../poll.js";
import type { RequestOptions, Transport } from "../transport.js";
import type { Operation, OperationStatus } from "../types.js";

/** The statuses after which an operation does not change. */
export const FINAL_OPERATION_STATUSES: readonly OperationStatus[] = ["executed", "failed", "rejected", "expired"];

/** How {@link OperationsApi.wait} polls (and the options of each poll). */
export interface OperationWaitOptions extends PollOptions<Operation>, RequestOptions {}

/**
 * `/api/v1/operations`: changes stored for approval (deleting or
 * destroying secrets, rotating keys, ...), which run once approved.
 */
export class OperationsApi {
  constructor(private readonly transport: Transport) {}

  /** An operation's state; `result` once `executed`. */
  async get(id: string, options?: RequestOptions): Promise<Operation> {
    const answer = await this.transport.request<Operation>({
      method: "GET", path: `/api/v1/operations/${encodeURIComponent(id)}`, idempotent: true, options,
    });
    return answer.body;
  }

  /**
   * Polls until the operation is `executed`, `failed`, `rejected` or
   * `expired`, and answers it.
   *
   * @throws CustosError `wait_timeout` after `waitTimeoutMs`.
   */
  async wait(id: string, options: OperationWaitOptions = {}): Promise<Operation> {
    return pollUntil(
      `operation ${id}`,
      () => this.get(id, options),
      (operation) => FINAL_OPERATION_STATUSES.includes(operation.status),
      options,
    );
  }
}
