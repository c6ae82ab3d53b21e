import type { RequestOptions, Transport } from "../transport.js";
import type { CreatedIdentity, CreateIdentityInput, Identity, ItemList, Org } from "../types.js";

/** `/api/v1/identities`: machine identities of the caller's org. */
export class IdentitiesApi {
  constructor(private readonly transport: Transport) {}

  /** Creates an identity; its `clientSecret` is shown only in this answer. */
  async create(input: CreateIdentityInput, options?: RequestOptions): Promise<CreatedIdentity> {
    const answer = await this.transport.request<CreatedIdentity>({
      method: "POST", path: "/api/v1/identities", body: input, idempotent: false, options,
    });
    return answer.body;
  }

  /** The org's identities (never their secrets). */
  async list(options?: RequestOptions): Promise<Identity[]> {
    const answer = await this.transport.request<ItemList<Identity>>({
      method: "GET", path: "/api/v1/identities", idempotent: true, options,
    });
    return answer.body.items;
  }

  /**
   * Enrols TOTP for the calling identity itself (`id` must be its own):
   * answers the `otpauth://` URI for an authenticator.
   */
  async enrollMfa(id: string, options?: RequestOptions): Promise<{ otpauthUri: string }> {
    const answer = await this.transport.request<{ otpauthUri: string }>({
      method: "POST", path: `/api/v1/identities/${encodeURIComponent(id)}/mfa`, idempotent: false, options,
    });
    return answer.body;
  }
}

/** `/api/v1/orgs`: organisations (platform admins). */
export class OrgsApi {
  constructor(private readonly transport: Transport) {}

  /** Creates an org with its default policy. */
  async create(input: { name: string }, options?: RequestOptions): Promise<Org> {
    const answer = await this.transport.request<Org>({
      method: "POST", path: "/api/v1/orgs", body: input, idempotent: false, options,
    });
    return answer.body;
  }
}
