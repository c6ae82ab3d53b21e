import type { RequestOptions, Transport } from "../transport.js";
import type {
  BatchItemError,
  CreateTransitKeyInput,
  Datakey,
  DatakeyInput,
  DecryptBatchInput,
  DecryptInput,
  DecryptResult,
  EncryptBatchInput,
  EncryptInput,
  EncryptResult,
  PendingApproval,
  RewrapInput,
  TransitHmacInput,
  TransitKey,
  TransitKeyConfigInput,
  TransitSignInput,
  TransitVerifyInput,
} from "../types.js";

/**
 * `/api/v1/transit/*`: encryption as a service. Keys never leave the
 * server; ciphertexts look like `vault:v<N>:...`. Plaintexts are UTF-8 text
 * unless `encoding: "base64"` is given.
 *
 * Transit operations change nothing but counters and the audit log, so the
 * client retries them after timeouts and 5xx answers.
 */
export class TransitApi {
  constructor(private readonly transport: Transport) {}

  private async post<T>(path: string, body: unknown, idempotent: boolean, options?: RequestOptions): Promise<T> {
    const answer = await this.transport.request<T>({ method: "POST", path, body, idempotent, options });
    return answer.body;
  }

  /** Creates a key (`aes256-gcm96` unless `type` says otherwise). */
  async createKey(input: CreateTransitKeyInput, options?: RequestOptions): Promise<TransitKey> {
    return this.post("/api/v1/transit/keys", input, false, options);
  }

  /** A key's versions and, for signing keys, public keys. */
  async getKey(name: string, options?: RequestOptions): Promise<TransitKey> {
    const answer = await this.transport.request<TransitKey>({
      method: "GET", path: `/api/v1/transit/keys/${encodeURIComponent(name)}`, idempotent: true, options,
    });
    return answer.body;
  }

  /**
   * Adds a key version; new encryptions use it, old ciphertexts still
   * decrypt. Under the default policy this needs an admin's approval and
   * answers a {@link PendingApproval} (follow it with `operations.wait`).
   */
  async rotateKey(name: string, options?: RequestOptions): Promise<TransitKey | PendingApproval> {
    return this.post(`/api/v1/transit/keys/${encodeURIComponent(name)}/rotate`, undefined, false, options);
  }

  /**
   * Changes a key's settings: `minDecryptionVersion` retires old versions
   * (their ciphertexts no longer decrypt). May need approval.
   */
  async configureKey(
    name: string,
    input: TransitKeyConfigInput,
    options?: RequestOptions,
  ): Promise<TransitKey | PendingApproval> {
    return this.post(`/api/v1/transit/keys/${encodeURIComponent(name)}/config`, input, false, options);
  }

  /**
   * Encrypts one plaintext.
   *
   * @example
   * const { ciphertext } = await custos.transit.encrypt({ keyName: "pii", plaintext: "4111 1111 1111 1111" });
   */
  async encrypt(input: EncryptInput, options?: RequestOptions): Promise<EncryptResult> {
    return this.post("/api/v1/transit/encrypt", input, true, options);
  }

  /** Encrypts a batch; results in order, each a ciphertext or its own error. */
  async encryptBatch(
    input: EncryptBatchInput,
    options?: RequestOptions,
  ): Promise<(EncryptResult | BatchItemError)[]> {
    const body = await this.post<{ batch: (EncryptResult | BatchItemError)[] }>(
      "/api/v1/transit/encrypt", input, true, options,
    );
    return body.batch;
  }

  /** Decrypts one ciphertext (with the same `context` as at encryption). */
  async decrypt(input: DecryptInput, options?: RequestOptions): Promise<DecryptResult> {
    return this.post("/api/v1/transit/decrypt", input, true, options);
  }

  /** Decrypts a batch; results in order, each a plaintext or its own error. */
  async decryptBatch(
    input: DecryptBatchInput,
    options?: RequestOptions,
  ): Promise<(DecryptResult | BatchItemError)[]> {
    const body = await this.post<{ batch: (DecryptResult | BatchItemError)[] }>(
      "/api/v1/transit/decrypt", input, true, options,
    );
    return body.batch;
  }

  /** Re-encrypts under the key's latest version; the plaintext never leaves the server. */
  async rewrap(input: RewrapInput, options?: RequestOptions): Promise<EncryptResult> {
    return this.post("/api/v1/transit/rewrap", input, true, options);
  }

  /**
   * A fresh data key for envelope encryption: its plaintext (base64) and its
   * ciphertext under the transit key, or only the ciphertext with
   * `wrappedOnly: true`.
   */
  async datakey(input: DatakeyInput, options?: RequestOptions): Promise<Datakey> {
    const { wrappedOnly, ...body } = input;
    const answer = await this.transport.request<Datakey>({
      method: "POST",
      path: "/api/v1/transit/datakey",
      query: { wrappedOnly: wrappedOnly === true ? true : undefined },
      body,
      idempotent: true,
      options,
    });
    return answer.body;
  }

  /** Signs base64 `input` with a signing key: answers `vault:v<N>:...` signature. */
  async sign(input: TransitSignInput, options?: RequestOptions): Promise<{ signature: string; keyVersion: number }> {
    return this.post("/api/v1/transit/sign", input, true, options);
  }

  /** Verifies a signature made by {@link sign}. */
  async verify(input: TransitVerifyInput, options?: RequestOptions): Promise<{ valid: boolean }> {
    return this.post("/api/v1/transit/verify", input, true, options);
  }

  /** HMAC of base64 `input` with an `hmac` key. */
  async hmac(input: TransitHmacInput, options?: RequestOptions): Promise<{ hmac: string }> {
    return this.post("/api/v1/transit/hmac", input, true, options);
  }
}
