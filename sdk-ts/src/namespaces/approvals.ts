import type { RequestOptions, Transport } from "../transport.js";
import type { Approval, ApprovalStatus, ItemList, VoteInput } from "../types.js";

/** `/api/v1/approvals`: requests waiting for approvers, and votes on them. */
export class ApprovalsApi {
  constructor(private readonly transport: Transport) {}

  /** The org's approvals, optionally only those with `status` (e.g. `pending`). */
  async list(filter: { status?: ApprovalStatus } = {}, options?: RequestOptions): Promise<Approval[]> {
    const answer = await this.transport.request<ItemList<Approval>>({
      method: "GET", path: "/api/v1/approvals", query: { status: filter.status }, idempotent: true, options,
    });
    return answer.body.items;
  }

  /** One approval with its votes. */
  async get(id: string, options?: RequestOptions): Promise<Approval> {
    const answer = await this.transport.request<Approval>({
      method: "GET", path: `/api/v1/approvals/${encodeURIComponent(id)}`, idempotent: true, options,
    });
    return answer.body;
  }

  /**
   * Approves (`totp` when the rule requires MFA). Answers the approval
   * afterwards: `approved` once enough approvers agreed, else still `pending`.
   * The requester cannot approve their own request (`self_approval`).
   */
  async approve(id: string, input: VoteInput = {}, options?: RequestOptions): Promise<Approval> {
    return this.vote(id, "approve", input, options);
  }

  /** Rejects: the request ends as `rejected`. */
  async reject(id: string, input: VoteInput = {}, options?: RequestOptions): Promise<Approval> {
    return this.vote(id, "reject", input, options);
  }

  private async vote(
    id: string,
    decision: "approve" | "reject",
    input: VoteInput,
    options: RequestOptions | undefined,
  ): Promise<Approval> {
    const answer = await this.transport.request<Approval>({
      method: "POST",
      path: `/api/v1/approvals/${encodeURIComponent(id)}/${decision}`,
      body: input,
      idempotent: false,
      options,
    });
    return answer.body;
  }
}
