/**
 * The client: `new Custos({ url, clientId, clientSecret })` or
 * `new Custos({ url, token })`, with one namespace per part of the API.
 */

import { TokenManager } from "./auth.js";
import type { TokenAnswer, TokenProvider, TokenSourceConfig } from "./auth.js";
import { ApprovalsApi } from "./namespaces/approvals.js";
import { AuditApi } from "./namespaces/audit.js";
import { IdentitiesApi, OrgsApi } from "./namespaces/identities.js";
import { KeysApi } from "./namespaces/keys.js";
import { MpcApi } from "./namespaces/mpc.js";
import { NodesApi } from "./namespaces/nodes.js";
import { OperationsApi } from "./namespaces/operations.js";
import { PoliciesApi } from "./namespaces/policies.js";
import { SecretsApi } from "./namespaces/secrets.js";
import type { SecretCacheOptions } from "./namespaces/secrets.js";
import { SigningRequestsApi } from "./namespaces/signing-requests.js";
import { SysApi } from "./namespaces/sys.js";
import { TransitApi } from "./namespaces/transit.js";
import { WalletsApi } from "./namespaces/wallets.js";
import { resolveRetry } from "./retry.js";
import type { RetryOptions } from "./retry.js";
import { Transport } from "./transport.js";
import { VERSION } from "./version.js";

/** Options shared by every way of authenticating. */
export interface CustosBaseOptions {
  /** The control plane's base URL, e.g. `https://custos.internal:8200`. */
  url: string;
  /** Per-attempt timeout in ms. Default 60 s (key generation and signing: 5 minutes). */
  timeoutMs?: number;
  /** Retry policy, or `false` to never retry. */
  retry?: RetryOptions | false;
  /** Log in again this long before the token expires (at most a tenth of its life). Default 60 s. */
  refreshMarginMs?: number;
  /** The secret cache behind `secrets.hydrate`: TTLs and the `onStale` callback. */
  secrets?: SecretCacheOptions;
  /**
   * The environment of every secrets call that names none, as the seed
   * SDKs' `environment: "production"`: `secrets.get("stripe-api-key")`.
   */
  environment?: string;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
  /** The `fetch` to use. Default the global one. */
  fetch?: typeof globalThis.fetch;
}

/** Log in with a machine identity's client credentials (tokens are refreshed). */
export interface CustosCredentialOptions extends CustosBaseOptions {
  clientId: string;
  clientSecret: string;
  token?: never;
}

/** Use a bearer token you already have (or a function that returns the current one). */
export interface CustosTokenOptions extends CustosBaseOptions {
  token: TokenProvider;
  clientId?: never;
  clientSecret?: never;
}

/** No credentials: only `sys.health`, `sys.sealStatus`, `sys.init`, `sys.unseal` and `login`. */
export interface CustosAnonymousOptions extends CustosBaseOptions {
  token?: never;
  clientId?: never;
  clientSecret?: never;
}

/** Options of {@link Custos}. */
export type CustosOptions = CustosCredentialOptions | CustosTokenOptions | CustosAnonymousOptions;

/**
 * A Custos client.
 *
 * @example
 * const custos = new Custos({
 *   url: process.env.CUSTOS_URL!,
 *   clientId: process.env.CUSTOS_CLIENT_ID!,
 *   clientSecret: process.env.CUSTOS_CLIENT_SECRET!,
 * });
 * const { value } = await custos.secrets.hydrate("payments/stripe", { environment: "production" });
 */
export class Custos {
  /** KV secrets and credential hydration. */
  readonly secrets: SecretsApi;
  /** Encryption as a service. */
  readonly transit: TransitApi;
  /** The key registry. */
  readonly keys: KeysApi;
  /** MPC wallets and signing. */
  readonly wallets: WalletsApi;
  /** The seed SDKs' names for wallets: `mpc.generateWallet`, `mpc.sign`. */
  readonly mpc: MpcApi;
  /** Progress of signing and resharing requests. */
  readonly signingRequests: SigningRequestsApi;
  /** Changes stored for approval (secrets, keys), and their outcome. */
  readonly operations: OperationsApi;
  /** Approvals: list, approve, reject. */
  readonly approvals: ApprovalsApi;
  /** Policies. */
  readonly policies: PoliciesApi;
  /** The audit log: list with filters, verify the chain. */
  readonly audit: AuditApi;
  /** Signer nodes. */
  readonly nodes: NodesApi;
  /** Health, seal status, init, unseal, seal. */
  readonly sys: SysApi;
  /** Machine identities. */
  readonly identities: IdentitiesApi;
  /** Orgs (platform admins). */
  readonly orgs: OrgsApi;

  private readonly transport: Transport;

  constructor(options: CustosOptions) {
    if (typeof options.url !== "string" || options.url === "") {
      throw new TypeError("Custos: `url` is required");
    }
    const fetchFunction = options.fetch ?? globalThis.fetch;
    if (typeof fetchFunction !== "function") {
      throw new TypeError("Custos: no global fetch (Node 20 or newer is needed), and none was given");
    }
    const tokenSource: TokenSourceConfig =
      options.clientId !== undefined && options.clientSecret !== undefined
        ? {
            kind: "credentials",
            clientId: options.clientId,
            clientSecret: options.clientSecret,
            refreshMarginMs: options.refreshMarginMs ?? 60_000,
          }
        : options.token !== undefined
          ? { kind: "static", token: options.token }
          : { kind: "none" };
    const retry = options.retry === false ? resolveRetry({ maxRetries: 0 }) : resolveRetry(options.retry);
    // The token manager logs in through the same transport, unauthenticated.
    let transport: Transport | undefined;
    const tokens = new TokenManager(tokenSource, (clientId, clientSecret) =>
      (transport as Transport)
        .request<TokenAnswer>({
          method: "POST",
          path: "/api/v1/auth/token",
          body: { clientId, clientSecret },
          idempotent: true,
          auth: false,
        })
        .then((answer) => answer.body),
    );
    transport = new Transport({
      baseUrl: options.url.endsWith("/") ? options.url : `${options.url}/`,
      fetch: fetchFunction,
      timeoutMs: options.timeoutMs ?? 60_000,
      retry,
      headers: { "user-agent": `custos-sdk-ts/${VERSION} node/${process.versions.node}`, ...options.headers },
      tokens,
      random: Math.random,
    });
    this.transport = transport;
    this.sys = new SysApi(transport);
    this.identities = new IdentitiesApi(transport);
    this.orgs = new OrgsApi(transport);
    this.policies = new PoliciesApi(transport);
    this.approvals = new ApprovalsApi(transport);
    this.audit = new AuditApi(transport);
    this.nodes = new NodesApi(transport);
    this.signingRequests = new SigningRequestsApi(transport);
    this.operations = new OperationsApi(transport);
    this.wallets = new WalletsApi(transport, this.signingRequests);
    this.transit = new TransitApi(transport);
    this.keys = new KeysApi(transport);
    this.secrets = new SecretsApi(transport, options.secrets, options.environment);
    this.mpc = new MpcApi(this.wallets);
  }

  /** The control plane's base URL. */
  get url(): string {
    return this.transport.config.baseUrl;
  }

  /**
   * Trades client credentials for a token (`POST /api/v1/auth/token`)
   * without keeping it: for handing a token to another process. The client
   * itself logs in on its own when built with credentials.
   */
  async login(clientId: string, clientSecret: string): Promise<TokenAnswer> {
    const answer = await this.transport.request<TokenAnswer>({
      method: "POST",
      path: "/api/v1/auth/token",
      body: { clientId, clientSecret },
      idempotent: true,
      auth: false,
    });
    return answer.body;
  }

  /** The current access token (logging in first when needed); undefined without credentials. */
  async accessToken(): Promise<string | undefined> {
    return this.transport.config.tokens.token();
  }

  /** The server's OpenAPI document (`GET /api/v1/openapi.json`). */
  async openapi(): Promise<OpenApiDocument> {
    const answer = await this.transport.request<OpenApiDocument>({
      method: "GET", path: "/api/v1/openapi.json", idempotent: true, auth: false,
    });
    return answer.body;
  }
}

/** The parts of an OpenAPI document the SDK looks at. */
export interface OpenApiDocument {
  openapi: string;
  info: { title: string; version: string };
  paths: Record<string, Record<string, unknown>>;
}
