import type { RequestOptions, Transport } from "../transport.js";
import type { Committee, CommitteeResult, ItemList, SignerNode } from "../types.js";

/** Aux-info generation takes minutes. */
const COMMITTEE_TIMEOUT_MS = 30 * 60 * 1000;

/** `/api/v1/nodes`: the signer nodes. */
export class NodesApi {
  constructor(private readonly transport: Transport) {}

  /** The signer nodes and their health as the control plane sees it. */
  async list(options?: RequestOptions): Promise<SignerNode[]> {
    const answer = await this.transport.request<ItemList<SignerNode>>({
      method: "GET", path: "/api/v1/nodes", idempotent: true, options,
    });
    return answer.body.items;
  }

  /**
   * Every ECDSA committee with its aux-info preparation: whether it is
   * ready, the runs tried, the last failed run's error and since when a
   * preparation runs. Follow a `prepareCommittee` call with it.
   */
  async committees(options?: RequestOptions): Promise<Committee[]> {
    const answer = await this.transport.request<ItemList<Committee>>({
      method: "GET", path: "/api/v1/nodes/committees", idempotent: true, options,
    });
    return answer.body.items;
  }

  /**
   * Prepares ECDSA (CGGMP21) aux info for a committee of nodes, by name
   * (platform admin; minutes of CPU on every node). Needed once before
   * `cggmp21` wallets on that committee. A failed run is tried again
   * under a fresh run id (up to three runs); `committees()` shows them.
   */
  async prepareCommittee(nodes: string[], options?: RequestOptions): Promise<CommitteeResult> {
    const answer = await this.transport.request<CommitteeResult>({
      method: "POST",
      path: "/api/v1/nodes/committees",
      body: { nodes },
      // Preparing an already-prepared committee answers at once.
      idempotent: true,
      defaultTimeoutMs: COMMITTEE_TIMEOUT_MS,
      options,
    });
    return answer.body;
  }
}
