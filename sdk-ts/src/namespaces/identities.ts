import type { RequestOptions, Transport } from "../transport.js";
import type {
  CreatedIdentity,
  CreateIdentityInput,
  Identity,
  IdentityToken,
  IssuedSecret,
  ItemList,
  Org,
  PendingApproval,
  Role,
} from "../types.js";

/** Options of a call that may need the caller's current TOTP code. */
export interface TotpOptions extends RequestOptions {
  /** The caller's current TOTP code. */
  totp?: string;
}

function withTotp(options: TotpOptions = {}): RequestOptions {
  const { totp, ...rest } = options;
  return totp === undefined ? rest : { ...rest, headers: { ...rest.headers, "x-custos-totp": totp } };
}

/** `/api/v1/identities`: machine identities of the caller's org. */
export class IdentitiesApi {
  constructor(private readonly transport: Transport) {}

  private path(id: string, rest = ""): string {
    return `/api/v1/identities/${encodeURIComponent(id)}${rest}`;
  }

  /**
   * Creates an identity. Allowed at once (a platform admin seeding an org,
   * or a policy that allows it): its `clientSecret` is shown only in this
   * answer. Under the default policy an org admin's request waits for
   * another admin (a {@link PendingApproval}); once approved, its creator
   * gets the first secret from {@link firstSecret}.
   */
  async create(input: CreateIdentityInput, options?: RequestOptions): Promise<CreatedIdentity | PendingApproval> {
    const answer = await this.transport.request<CreatedIdentity | PendingApproval>({
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

  /** One identity. */
  async get(id: string, options?: RequestOptions): Promise<Identity> {
    const answer = await this.transport.request<Identity>({
      method: "GET", path: this.path(id), idempotent: true, options,
    });
    return answer.body;
  }

  /** Changes an identity's role (one admin's approval by default). */
  async setRole(id: string, role: Role, options?: RequestOptions): Promise<Identity | PendingApproval> {
    const answer = await this.transport.request<Identity | PendingApproval>({
      method: "PUT", path: this.path(id), body: { role }, idempotent: true, options,
    });
    return answer.body;
  }

  /** Disables an identity at once: it cannot log in, and its tokens are revoked on every replica within a second. */
  async disable(id: string, options?: RequestOptions): Promise<Identity> {
    const answer = await this.transport.request<Identity>({
      method: "POST", path: this.path(id, "/disable"), body: {}, idempotent: true, options,
    });
    return answer.body;
  }

  /** Enables a disabled identity (one admin's approval by default). */
  async enable(id: string, options?: RequestOptions): Promise<Identity | PendingApproval> {
    const answer = await this.transport.request<Identity | PendingApproval>({
      method: "POST", path: this.path(id, "/enable"), body: {}, idempotent: true, options,
    });
    return answer.body;
  }

  /** Deletes an identity and its tokens (two approvals by default). */
  async delete(id: string, options?: RequestOptions): Promise<PendingApproval | { id: string; deleted: boolean }> {
    const answer = await this.transport.request<PendingApproval | { id: string; deleted: boolean }>({
      method: "DELETE", path: this.path(id), idempotent: true, options,
    });
    return answer.body;
  }

  /** An identity's active tokens (ids, times, addresses; never a token). */
  async tokens(id: string, options?: RequestOptions): Promise<IdentityToken[]> {
    const answer = await this.transport.request<ItemList<IdentityToken>>({
      method: "GET", path: this.path(id, "/tokens"), idempotent: true, options,
    });
    return answer.body.items;
  }

  /** Revokes every token of an identity, or one (`tokenId`). */
  async revokeTokens(id: string, tokenId?: string, options?: RequestOptions): Promise<{ revoked: number }> {
    const rest = tokenId === undefined ? "/tokens" : `/tokens/${encodeURIComponent(tokenId)}`;
    const answer = await this.transport.request<{ revoked: number }>({
      method: "DELETE", path: this.path(id, rest), idempotent: true, options,
    });
    return answer.body;
  }

  /**
   * Replaces the calling identity's own client secret, given its current
   * one (and a TOTP code when it has MFA); all its tokens are revoked. The
   * new secret is only in this answer.
   */
  async rotateSecret(id: string, currentSecret: string, options?: TotpOptions): Promise<IssuedSecret> {
    const answer = await this.transport.request<IssuedSecret>({
      method: "POST",
      path: this.path(id, "/rotate-secret"),
      body: options?.totp === undefined ? { clientSecret: currentSecret } : { clientSecret: currentSecret, totp: options.totp },
      idempotent: false,
      options: withTotp(options),
    });
    return answer.body;
  }

  /** The first client secret of an identity created after an approval: to its creator, once. */
  async firstSecret(id: string, options?: RequestOptions): Promise<IssuedSecret> {
    const answer = await this.transport.request<IssuedSecret>({
      method: "POST", path: this.path(id, "/credentials"), body: {}, idempotent: false, options,
    });
    return answer.body;
  }

  /**
   * Starts TOTP enrolment for the calling identity itself (`id` must be its
   * own): answers the `otpauth://` URI of a pending secret, which takes
   * effect once {@link confirmMfa} gets a first code. Re-enrolling an
   * identity that has MFA needs a current code (`totp`).
   */
  async enrollMfa(id: string, options?: TotpOptions): Promise<{ otpauthUri: string }> {
    const answer = await this.transport.request<{ otpauthUri: string }>({
      method: "POST", path: this.path(id, "/mfa"), body: {}, idempotent: false, options: withTotp(options),
    });
    return answer.body;
  }

  /** Confirms a pending enrolment with a first code of it. */
  async confirmMfa(id: string, code: string, options?: RequestOptions): Promise<{ id: string; mfa: boolean }> {
    const answer = await this.transport.request<{ id: string; mfa: boolean }>({
      method: "POST", path: this.path(id, "/mfa/confirm"), body: { code }, idempotent: false, options,
    });
    return answer.body;
  }

  /** Asks to clear another identity's MFA (one admin's approval by default). */
  async resetMfa(id: string, options?: RequestOptions): Promise<PendingApproval | Identity> {
    const answer = await this.transport.request<PendingApproval | Identity>({
      method: "POST", path: this.path(id, "/mfa/reset"), body: {}, idempotent: false, options,
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

  /**
   * Reseals an org's policies as they are now (platform admins): the
   * break-glass after its policy rows were changed behind the control
   * plane's back, which makes them deny everything. Review them first.
   */
  async resealPolicies(id: string, options?: RequestOptions): Promise<{ org: string; resealed: boolean }> {
    const answer = await this.transport.request<{ org: string; resealed: boolean }>({
      method: "POST", path: `/api/v1/orgs/${encodeURIComponent(id)}/policies/reseal`, body: {}, idempotent: true, options,
    });
    return answer.body;
  }
}
