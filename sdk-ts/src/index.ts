/**
 * `@custos/sdk`: the TypeScript client of Custos. Start with {@link Custos}.
 */

// The client and its options.
export { Custos } from "./client.js";
export type {
  CustosAnonymousOptions,
  CustosBaseOptions,
  CustosCredentialOptions,
  CustosOptions,
  CustosTokenOptions,
  OpenApiDocument,
} from "./client.js";
export type { TokenAnswer, TokenProvider } from "./auth.js";
export type { RequestOptions } from "./transport.js";
export { backoffDelay, DEFAULT_RETRY } from "./retry.js";
export type { RetryOptions } from "./retry.js";
export { VERSION } from "./version.js";

// Errors.
export { CLIENT_ERROR_CODES, CustosConnectionError, CustosError } from "./errors.js";
export type { CustosErrorInit } from "./errors.js";

// Credential hydration, waiting, approvals.
export { DEFAULT_CACHE_TTL_MS, DEFAULT_STALE_TTL_MS, HydrationCache, isUnavailable } from "./cache.js";
export type { Hydrated, HydrationCacheOptions, StaleEvent } from "./cache.js";
export type { PollOptions } from "./poll.js";
export { isPendingApproval } from "./pending.js";

// The namespaces (reached as `custos.secrets`, `custos.transit`, ...).
export { ApprovalsApi } from "./namespaces/approvals.js";
export { AuditApi } from "./namespaces/audit.js";
export { IdentitiesApi, OrgsApi } from "./namespaces/identities.js";
export { KeysApi } from "./namespaces/keys.js";
export { MpcApi } from "./namespaces/mpc.js";
export type { GenerateWalletInput, MpcChain, MpcSignInput } from "./namespaces/mpc.js";
export { NodesApi } from "./namespaces/nodes.js";
export { FINAL_OPERATION_STATUSES, OperationsApi } from "./namespaces/operations.js";
export type { OperationWaitOptions } from "./namespaces/operations.js";
export { PoliciesApi } from "./namespaces/policies.js";
export { SecretsApi } from "./namespaces/secrets.js";
export type {
  Environmental,
  HydrateOptions,
  SecretCacheOptions,
  SecretChangeResult,
  SecretStaleEvent,
} from "./namespaces/secrets.js";
export { FINAL_SIGNING_STATUSES, SigningRequestsApi } from "./namespaces/signing-requests.js";
export type { WaitOptions } from "./namespaces/signing-requests.js";
export { SysApi } from "./namespaces/sys.js";
export { TransitApi } from "./namespaces/transit.js";
export { WalletsApi } from "./namespaces/wallets.js";
export type { SignOptions } from "./namespaces/wallets.js";

// Bodies and answers; the raw types generated from the server's OpenAPI document.
export type * from "./types.js";
export type { components as OpenApiComponents, paths as OpenApiPaths } from "./generated/openapi.js";
