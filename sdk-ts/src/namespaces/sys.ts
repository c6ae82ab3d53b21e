import type { RequestOptions, Transport } from "../transport.js";
import type { Health, InitInput, InitResult, SealStatus, UnsealInput, UnsealResult } from "../types.js";

/** `/api/v1/sys/*`: health, seal status, init, unseal, seal. */
export class SysApi {
  constructor(private readonly transport: Transport) {}

  /** Health; answers while sealed and needs no token. */
  async health(options?: RequestOptions): Promise<Health> {
    const answer = await this.transport.request<Health>({
      method: "GET", path: "/api/v1/sys/health", idempotent: true, auth: false, options,
    });
    return answer.body;
  }

  /** The coordinator's public key (hex), which signer nodes pin; answers once unsealed. */
  async coordinatorKey(options?: RequestOptions): Promise<{ publicKey: string }> {
    const answer = await this.transport.request<{ publicKey: string }>({
      method: "GET", path: "/api/v1/sys/coordinator-key", idempotent: true, auth: false, options,
    });
    return answer.body;
  }

  /** Whether the control plane is initialized and sealed, and the unseal progress. */
  async sealStatus(options?: RequestOptions): Promise<SealStatus> {
    const answer = await this.transport.request<SealStatus>({
      method: "GET", path: "/api/v1/sys/seal-status", idempotent: true, auth: false, options,
    });
    return answer.body;
  }

  /**
   * Initializes a new control plane, once: answers the unseal shares and the
   * root credentials, which are never shown again.
   */
  async init(input: InitInput = {}, options?: RequestOptions): Promise<InitResult> {
    const answer = await this.transport.request<InitResult>({
      method: "POST", path: "/api/v1/sys/init", body: input, idempotent: false, auth: false, options,
    });
    return answer.body;
  }

  /** Gives one unseal share (or `{reset: true}` to start over). */
  async unseal(input: UnsealInput, options?: RequestOptions): Promise<UnsealResult> {
    const answer = await this.transport.request<UnsealResult>({
      method: "POST", path: "/api/v1/sys/unseal", body: input, idempotent: false, auth: false, options,
    });
    return answer.body;
  }

  /** Seals the control plane (platform admin): it forgets its master key. */
  async seal(options?: RequestOptions): Promise<{ sealed: true }> {
    const answer = await this.transport.request<{ sealed: true }>({
      method: "POST", path: "/api/v1/sys/seal", idempotent: true, options,
    });
    return answer.body;
  }
}
