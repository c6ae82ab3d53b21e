import type { RequestOptions, Transport } from "../transport.js";
import type { ItemList, PendingApproval, Policy, PolicyInput } from "../types.js";

/** `/api/v1/policies`: the org's policies, evaluated in priority order. */
export class PoliciesApi {
  constructor(private readonly transport: Transport) {}

  /**
   * Creates a policy. Under the default policy an org admin's change waits
   * for another admin (a {@link PendingApproval}: separation of duties); a
   * platform admin's takes effect at once.
   *
   * @example
   * await custos.policies.create({
   *   name: "treasury",
   *   priority: 10,
   *   rules: [{ action: "wallet.sign", resource: "wallet:treasury-*", effect: "require_approval",
   *             approvals: { count: 2, roles: ["approver"] } }],
   * });
   */
  async create(input: PolicyInput, options?: RequestOptions): Promise<Policy | PendingApproval> {
    const answer = await this.transport.request<Policy | PendingApproval>({
      method: "POST", path: "/api/v1/policies", body: input, idempotent: false, options,
    });
    return answer.body;
  }

  /** The org's policies in evaluation order. */
  async list(options?: RequestOptions): Promise<Policy[]> {
    const answer = await this.transport.request<ItemList<Policy>>({
      method: "GET", path: "/api/v1/policies", idempotent: true, options,
    });
    return answer.body.items;
  }

  /** One policy. */
  async get(id: string, options?: RequestOptions): Promise<Policy> {
    const answer = await this.transport.request<Policy>({
      method: "GET", path: `/api/v1/policies/${encodeURIComponent(id)}`, idempotent: true, options,
    });
    return answer.body;
  }

  /** Replaces a policy's rules (and priority); the name stays. May wait for an approval, as {@link create}. */
  async update(id: string, input: PolicyInput, options?: RequestOptions): Promise<Policy | PendingApproval> {
    const answer = await this.transport.request<Policy | PendingApproval>({
      method: "PUT", path: `/api/v1/policies/${encodeURIComponent(id)}`, body: input, idempotent: true, options,
    });
    return answer.body;
  }
}
