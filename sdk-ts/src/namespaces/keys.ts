import type { RequestOptions, Transport } from "../transport.js";
import type {
  CreateKeyInput,
  Key,
  KeyDecryptInput,
  KeyEncryptInput,
  KeySignInput,
  KeyUnwrapInput,
  KeyVerifyInput,
  KeyWrapInput,
  PendingApproval,
} from "../types.js";

/**
 * `/api/v1/keys`: the key registry (AES, ECDSA, Ed25519, RSA keys, in
 * software or in the HSM). Signatures and binary values are base64.
 */
export class KeysApi {
  constructor(private readonly transport: Transport) {}

  private path(id: string, operation?: string): string {
    const base = `/api/v1/keys/${encodeURIComponent(id)}`;
    return operation === undefined ? base : `${base}/${operation}`;
  }

  private async post<T>(path: string, body: unknown, idempotent: boolean, options?: RequestOptions): Promise<T> {
    const answer = await this.transport.request<T>({ method: "POST", path, body, idempotent, options });
    return answer.body;
  }

  /** Creates a key. */
  async create(input: CreateKeyInput, options?: RequestOptions): Promise<Key> {
    return this.post("/api/v1/keys", input, false, options);
  }

  /**
   * Signs a message or digest: `sign(id, input)`, or the seed SDKs'
   * `sign({ keyId, message, algorithm: "ECDSA_SHA256" })`.
   */
  async sign(
    id: string,
    input: KeySignInput,
    options?: RequestOptions,
  ): Promise<{ signature: string; version: number; algorithm: string }>;
  async sign(
    input: KeySignInput & { keyId: string },
    options?: RequestOptions,
  ): Promise<{ signature: string; version: number; algorithm: string }>;
  async sign(
    first: string | (KeySignInput & { keyId: string }),
    second?: KeySignInput | RequestOptions,
    third?: RequestOptions,
  ): Promise<{ signature: string; version: number; algorithm: string }> {
    const [id, input, options] = keyCall<KeySignInput>(first, second, third);
    return this.post(this.path(id, "sign"), input, true, options);
  }

  /**
   * Verifies a signature (old versions still verify after rotation):
   * `verify(id, input)`, or `verify({ keyId, message, signature })`.
   */
  async verify(id: string, input: KeyVerifyInput, options?: RequestOptions): Promise<{ valid: boolean; version: number }>;
  async verify(input: KeyVerifyInput & { keyId: string }, options?: RequestOptions): Promise<{ valid: boolean; version: number }>;
  async verify(
    first: string | (KeyVerifyInput & { keyId: string }),
    second?: KeyVerifyInput | RequestOptions,
    third?: RequestOptions,
  ): Promise<{ valid: boolean; version: number }> {
    const [id, input, options] = keyCall<KeyVerifyInput>(first, second, third);
    return this.post(this.path(id, "verify"), input, true, options);
  }

  /** Encrypts with the key's latest version. */
  async encrypt(
    id: string,
    input: KeyEncryptInput,
    options?: RequestOptions,
  ): Promise<{ ciphertext: string; version: number }> {
    return this.post(this.path(id, "encrypt"), input, true, options);
  }

  /** Decrypts (any version not destroyed). */
  async decrypt(id: string, input: KeyDecryptInput, options?: RequestOptions): Promise<{ plaintext: string }> {
    return this.post(this.path(id, "decrypt"), input, true, options);
  }

  /** Wraps key material. */
  async wrap(id: string, input: KeyWrapInput, options?: RequestOptions): Promise<{ wrapped: string; version: number }> {
    return this.post(this.path(id, "wrap"), input, true, options);
  }

  /** Unwraps what {@link wrap} wrapped. */
  async unwrap(id: string, input: KeyUnwrapInput, options?: RequestOptions): Promise<{ key: string }> {
    return this.post(this.path(id, "unwrap"), input, true, options);
  }

  /** Adds a key version; old versions still decrypt and verify. */
  async rotate(id: string, options?: RequestOptions): Promise<Key | PendingApproval> {
    return this.post(this.path(id, "rotate"), undefined, false, options);
  }

  /**
   * Crypto-shreds the key once approved: answers the pending approval. After
   * destruction every use answers `key_destroyed`.
   */
  async destroy(id: string, options?: RequestOptions): Promise<PendingApproval> {
    const answer = await this.transport.request<PendingApproval>({
      method: "DELETE", path: this.path(id), idempotent: false, options,
    });
    return answer.body;
  }
}

/** The key id, body and options of a call made as `(id, input, options)` or `({ keyId, ...input }, options)`. */
function keyCall<T>(
  first: string | (T & { keyId: string }),
  second: T | RequestOptions | undefined,
  third: RequestOptions | undefined,
): [string, T, RequestOptions | undefined] {
  if (typeof first === "string") {
    return [first, second as T, third];
  }
  const { keyId, ...input } = first;
  return [keyId, input as T, second as RequestOptions | undefined];
}
