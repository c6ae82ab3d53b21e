import { randomUUID } from "node:crypto";

import type { RequestOptions, Transport } from "../transport.js";
import type {
  BackupInput,
  BackupResult,
  CreateWalletInput,
  ItemList,
  PendingApproval,
  ReshareInput,
  RestoreInput,
  ShareBackup,
  SigningRequest,
  SignInput,
  Wallet,
  WalletAddress,
  WalletFreeze,
} from "../types.js";
import type { SigningRequestsApi, WaitOptions } from "./signing-requests.js";

/** Key generation and threshold signing take seconds to minutes. */
const MPC_TIMEOUT_MS = 5 * 60 * 1000;

/** Options of a signing call. */
export interface SignOptions extends RequestOptions {
  /** The caller's current TOTP code, when a rule requires MFA. */
  totp?: string;
}

/** `/api/v1/wallets`: MPC wallets, their addresses and signing. */
export class WalletsApi {
  constructor(
    private readonly transport: Transport,
    private readonly signingRequests: SigningRequestsApi,
  ) {}

  /**
   * Creates a wallet by distributed key generation on the signer nodes.
   *
   * @example
   * const wallet = await custos.wallets.create({
   *   name: "treasury-hot", protocol: "cggmp21", chain: "ethereum", threshold: 2, parties: 3,
   * });
   */
  async create(input: CreateWalletInput, options?: RequestOptions): Promise<Wallet> {
    const answer = await this.transport.request<Wallet>({
      method: "POST",
      path: "/api/v1/wallets",
      body: input,
      idempotent: false,
      defaultTimeoutMs: MPC_TIMEOUT_MS,
      options,
    });
    return answer.body;
  }

  /** One wallet. */
  async get(id: string, options?: RequestOptions): Promise<Wallet> {
    const answer = await this.transport.request<Wallet>({
      method: "GET", path: `/api/v1/wallets/${encodeURIComponent(id)}`, idempotent: true, options,
    });
    return answer.body;
  }

  /** The org's wallets. */
  async list(options?: RequestOptions): Promise<Wallet[]> {
    const answer = await this.transport.request<ItemList<Wallet>>({
      method: "GET", path: "/api/v1/wallets", idempotent: true, options,
    });
    return answer.body.items;
  }

  /** The key and address at a non-hardened HD path such as `m/0/5` (default `m`). */
  async address(id: string, path?: string, options?: RequestOptions): Promise<WalletAddress> {
    const answer = await this.transport.request<WalletAddress>({
      method: "GET",
      path: `/api/v1/wallets/${encodeURIComponent(id)}/address`,
      query: { path },
      idempotent: true,
      options,
    });
    return answer.body;
  }

  /**
   * Signs a transaction, message or digest under the org's policy. Answers
   * the request `signed` (with `signature`, and for EVM transactions
   * `rawTransaction` and `txHash`), or `pending_approval` with its
   * `approvalId` (follow it with `signingRequests.wait`).
   *
   * An `idempotencyKey` is added when absent, so retries after a timeout
   * or a 5xx never sign twice; give your own (an order id) to make the
   * whole operation idempotent across restarts.
   */
  async sign(walletId: string, input: SignInput, options: SignOptions = {}): Promise<SigningRequest> {
    const { totp, ...requestOptions } = options;
    const answer = await this.transport.request<SigningRequest>({
      method: "POST",
      path: `/api/v1/wallets/${encodeURIComponent(walletId)}/sign`,
      body: { ...input, idempotencyKey: input.idempotencyKey ?? randomUUID() },
      idempotent: true,
      defaultTimeoutMs: MPC_TIMEOUT_MS,
      options: totp === undefined
        ? requestOptions
        : { ...requestOptions, headers: { ...requestOptions.headers, "x-custos-totp": totp } },
    });
    return answer.body;
  }

  /**
   * {@link sign}, then waits through any approval until the request is
   * final (`signed`, `rejected` or `failed`).
   */
  async signAndWait(walletId: string, input: SignInput, options: SignOptions & WaitOptions = {}): Promise<SigningRequest> {
    const submitted = await this.sign(walletId, input, options);
    if (submitted.status === "signed") {
      return submitted;
    }
    return this.signingRequests.wait(submitted.requestId, options);
  }

  /**
   * Freezes a wallet at once: it signs and reshares nothing, including
   * requests approved or queued before. (A kill switch: no approval by
   * default.)
   */
  async freeze(walletId: string, reason?: string, options?: RequestOptions): Promise<WalletFreeze> {
    const answer = await this.transport.request<WalletFreeze>({
      method: "POST",
      path: `/api/v1/wallets/${encodeURIComponent(walletId)}/freeze`,
      body: reason === undefined ? {} : { reason },
      idempotent: true,
      options,
    });
    return answer.body;
  }

  /** Asks to unfreeze a wallet (one admin's approval by default). */
  async unfreeze(walletId: string, options?: RequestOptions): Promise<WalletFreeze | PendingApproval> {
    const answer = await this.transport.request<WalletFreeze | PendingApproval>({
      method: "POST",
      path: `/api/v1/wallets/${encodeURIComponent(walletId)}/unfreeze`,
      body: {},
      idempotent: true,
      options,
    });
    return answer.body;
  }

  /**
   * Moves the wallet's key to other nodes or another threshold, keeping its
   * address. Needs an admin approval by default: answers the request
   * (usually `pending_approval`). An idempotency key is added when absent.
   */
  async reshare(walletId: string, input: ReshareInput, options?: RequestOptions): Promise<SigningRequest> {
    const answer = await this.transport.request<SigningRequest>({
      method: "POST",
      path: `/api/v1/wallets/${encodeURIComponent(walletId)}/reshare`,
      body: { ...input, idempotencyKey: input.idempotencyKey ?? randomUUID() },
      idempotent: true,
      defaultTimeoutMs: MPC_TIMEOUT_MS,
      options,
    });
    return answer.body;
  }

  /**
   * Backs up the wallet's key shares (every holder, or `nodes`): each node
   * seals its share for its operator's recovery key and the org's HSM key,
   * so neither side alone can open it.
   */
  async backup(walletId: string, input: BackupInput = {}, options?: RequestOptions): Promise<BackupResult> {
    const answer = await this.transport.request<BackupResult>({
      method: "POST",
      path: `/api/v1/wallets/${encodeURIComponent(walletId)}/backups`,
      body: input,
      idempotent: false,
      defaultTimeoutMs: MPC_TIMEOUT_MS,
      options,
    });
    return answer.body;
  }

  /** The wallet's share backups, newest first. */
  async listBackups(walletId: string, options?: RequestOptions): Promise<ShareBackup[]> {
    const answer = await this.transport.request<ItemList<ShareBackup>>({
      method: "GET",
      path: `/api/v1/wallets/${encodeURIComponent(walletId)}/backups`,
      idempotent: true,
      options,
    });
    return answer.body.items;
  }

  /**
   * Restores a share into its node (the same node identity) once approved:
   * one admin's approval under the default policy. Follow the answer with
   * `operations.wait(operationId)`.
   */
  async restoreBackup(
    walletId: string,
    backupId: string,
    input: RestoreInput = {},
    options?: RequestOptions,
  ): Promise<PendingApproval | Record<string, unknown>> {
    const answer = await this.transport.request<PendingApproval | Record<string, unknown>>({
      method: "POST",
      path: `/api/v1/wallets/${encodeURIComponent(walletId)}/backups/${encodeURIComponent(backupId)}/restore`,
      body: input,
      idempotent: false,
      defaultTimeoutMs: MPC_TIMEOUT_MS,
      options,
    });
    return answer.body;
  }
}
