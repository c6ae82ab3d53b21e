import { HydrationCache } from "../cache.js";
import type { HydrationCacheOptions, StaleEvent } from "../cache.js";
import type { RequestOptions, Transport } from "../transport.js";
import type {
  CreateSecretInput,
  GetSecretInput,
  HydratedSecret,
  ItemList,
  ListSecretsFilter,
  PendingApproval,
  RotateSecretInput,
  Secret,
  SecretMetadata,
  SecretTargetInput,
  SecretVersions,
  UpdateSecretInput,
} from "../types.js";

/** Reported when `secrets.hydrate` serves a stale value. */
export interface SecretStaleEvent extends StaleEvent {
  name: string;
  environment: string;
  version: number | undefined;
}

/** The secret cache of a client (`new Custos({ secrets: {...} })`). */
export interface SecretCacheOptions extends Omit<HydrationCacheOptions, "onStale"> {
  /** Called whenever `hydrate` serves a stale value because the server cannot be reached. */
  onStale?: (event: SecretStaleEvent) => void;
}

/** `T` whose `environment` may be left to the client's default (`new Custos({ environment })`). */
export type Environmental<T extends { environment: string }> = Omit<T, "environment"> & { environment?: string };

/** Options of one `hydrate` call. */
export interface HydrateOptions extends Environmental<GetSecretInput>, RequestOptions {
  /** Called (before the client's `onStale`) if this call serves a stale value. */
  onStale?: (event: SecretStaleEvent) => void;
}

/** What delete and destroy answer when done at once. */
export interface SecretChangeResult {
  name: string;
  environment: string;
  deleted?: boolean;
  /** `all`, or the versions destroyed. */
  destroyed?: "all" | number[];
}

/**
 * `/api/v1/secrets`: versioned, tagged key-value secrets per environment,
 * and credential hydration with a cache and a stale fallback.
 */
export class SecretsApi {
  private readonly cache: HydrationCache<Secret>;
  private readonly onStale: ((event: SecretStaleEvent) => void) | undefined;

  /**
   * @param defaultEnvironment the client's `environment` option: the
   * environment of every call that names none (as the seed SDKs'
   * `new Custos({ environment: "production" })`).
   */
  constructor(
    private readonly transport: Transport,
    options: SecretCacheOptions = {},
    private readonly defaultEnvironment?: string,
  ) {
    const { onStale, ...cacheOptions } = options;
    this.cache = new HydrationCache<Secret>(cacheOptions);
    this.onStale = onStale;
  }

  /** `given`, else the client's environment; a call with neither is refused here. */
  private environment(given: string | undefined): string {
    const environment = given ?? this.defaultEnvironment;
    if (environment === undefined || environment === "") {
      throw new TypeError(
        "Custos: this secrets call names no environment: pass { environment } or set `environment` in new Custos({ ... })",
      );
    }
    return environment;
  }

  /** `input` with its environment filled in. */
  private withEnvironment<T extends { environment?: string }>(input: T): T & { environment: string } {
    return { ...input, environment: this.environment(input.environment) };
  }

  private path(name: string, operation?: string): string {
    const base = `/api/v1/secrets/${encodeURIComponent(name)}`;
    return operation === undefined ? base : `${base}/${operation}`;
  }

  /**
   * Creates a secret (version 1); a {@link PendingApproval} when a policy
   * requires approval for it.
   */
  async create(input: Environmental<CreateSecretInput>, options?: RequestOptions): Promise<SecretMetadata | PendingApproval> {
    const body = this.withEnvironment(input);
    const answer = await this.transport.request<SecretMetadata | PendingApproval>({
      method: "POST", path: "/api/v1/secrets", body, idempotent: false, options,
    });
    this.forget(body.name, body.environment);
    return answer.body;
  }

  /** A secret's value: the latest version, or `version`. Always asks the server. */
  async get(name: string, input: Environmental<GetSecretInput> = {}, options?: RequestOptions): Promise<Secret> {
    const answer = await this.transport.request<Secret>({
      method: "GET",
      path: this.path(name),
      query: { environment: this.environment(input.environment), version: input.version },
      idempotent: true,
      options,
    });
    return answer.body;
  }

  /** Secrets' metadata (no values), by environment and tags. */
  async list(filter: ListSecretsFilter = {}, options?: RequestOptions): Promise<SecretMetadata[]> {
    const answer = await this.transport.request<ItemList<SecretMetadata>>({
      method: "GET",
      path: "/api/v1/secrets",
      query: {
        environment: filter.environment ?? this.defaultEnvironment,
        tags: filter.tags,
        includeDeleted: filter.includeDeleted,
      },
      idempotent: true,
      options,
    });
    return answer.body.items;
  }

  /**
   * Writes a new version; answers it, or a {@link PendingApproval} when a
   * policy requires approval (check with {@link isPendingApproval}).
   */
  async update(
    name: string,
    input: Environmental<UpdateSecretInput>,
    options?: RequestOptions,
  ): Promise<SecretMetadata | PendingApproval> {
    const body = this.withEnvironment(input);
    const answer = await this.transport.request<SecretMetadata | PendingApproval>({
      method: "PUT", path: this.path(name), body, idempotent: false, options,
    });
    this.forget(name, body.environment);
    return answer.body;
  }

  /** A secret's versions (numbers, writers, times; never values). */
  async versions(name: string, input: { environment?: string } = {}, options?: RequestOptions): Promise<SecretVersions> {
    const answer = await this.transport.request<SecretVersions>({
      method: "GET",
      path: this.path(name, "versions"),
      query: { environment: this.environment(input.environment) },
      idempotent: true,
      options,
    });
    return answer.body;
  }

  /** Rotates: writes `newValue` as a new version and notifies `notifyWebhook`. */
  async rotate(
    name: string,
    input: Environmental<RotateSecretInput>,
    options?: RequestOptions,
  ): Promise<SecretMetadata | PendingApproval> {
    const body = this.withEnvironment(input);
    const answer = await this.transport.request<SecretMetadata | PendingApproval>({
      method: "POST", path: this.path(name, "rotate"), body, idempotent: false, options,
    });
    this.forget(name, body.environment);
    return answer.body;
  }

  /**
   * Soft-deletes a secret: under the default policy answers a
   * {@link PendingApproval} (two approvers); follow it with `operations.wait`.
   */
  async delete(
    name: string,
    input: { environment?: string } = {},
    options?: RequestOptions,
  ): Promise<PendingApproval | SecretChangeResult> {
    const environment = this.environment(input.environment);
    const answer = await this.transport.request<PendingApproval | SecretChangeResult>({
      method: "DELETE",
      path: this.path(name),
      query: { environment },
      idempotent: false,
      options,
    });
    this.forget(name, environment);
    return answer.body;
  }

  /** Undoes a soft delete: answers the secret's metadata. */
  async restore(
    name: string,
    input: { environment?: string } = {},
    options?: RequestOptions,
  ): Promise<SecretMetadata | PendingApproval> {
    const body = this.withEnvironment(input);
    const answer = await this.transport.request<SecretMetadata | PendingApproval>({
      method: "POST", path: this.path(name, "restore"), body, idempotent: false, options,
    });
    this.forget(name, body.environment);
    return answer.body;
  }

  /** Destroys versions (all when none are named) for good; needs approval by default. */
  async destroy(
    name: string,
    input: Environmental<SecretTargetInput> = {},
    options?: RequestOptions,
  ): Promise<PendingApproval | SecretChangeResult> {
    const body = this.withEnvironment(input);
    const answer = await this.transport.request<PendingApproval | SecretChangeResult>({
      method: "POST", path: this.path(name, "destroy"), body, idempotent: false, options,
    });
    this.forget(name, body.environment);
    return answer.body;
  }

  /**
   * Reads a secret for use by the application, through the client's cache:
   * a value fetched less than `ttlMs` ago (5 minutes by default) is reused;
   * otherwise the server is asked, and when it cannot be reached (no
   * answer, a timeout, or a 5xx) a cached value up to `staleTtlMs` old
   * (30 minutes by default) is served with `stale: true` and reported to
   * `onStale`. A refusal (403, 404) is thrown, never hidden by the cache.
   *
   * @example
   * const apiKey = await custos.secrets.hydrate("payments/stripe", { environment: "production" });
   * if (apiKey.stale) metrics.increment("custos.stale_secret");
   */
  async hydrate(name: string, options: HydrateOptions = {}): Promise<HydratedSecret> {
    const { environment: given, version, onStale, ...requestOptions } = options;
    const environment = this.environment(given);
    const key = cacheKey(name, environment, version);
    const report = (event: StaleEvent): void => {
      const readable = `${environment}/${name}${version === undefined ? "" : `@${version}`}`;
      const enriched: SecretStaleEvent = { ...event, key: readable, name, environment, version };
      onStale?.(enriched);
      this.onStale?.(enriched);
    };
    const hydrated = await this.cache.get(
      key,
      () => this.get(name, { environment, version }, requestOptions),
      report,
    );
    return {
      ...hydrated.value,
      stale: hydrated.stale,
      fromCache: hydrated.fromCache,
      fetchedAt: hydrated.fetchedAt,
    };
  }

  /**
   * Forgets cached values: of one secret (every version) in one environment,
   * of one secret in every environment, or everything.
   */
  invalidate(name?: string, environment?: string): void {
    if (name === undefined) {
      this.cache.invalidate();
      return;
    }
    this.forget(name, environment);
  }

  private forget(name: string, environment: string | undefined): void {
    for (const key of this.cache.keys()) {
      const parsed = parseCacheKey(key);
      if (parsed.name === name && (environment === undefined || parsed.environment === environment)) {
        this.cache.invalidate(key);
      }
    }
  }
}

/** `environment`, NUL, `name`, NUL, version or empty: names may hold `/` and `@`. */
function cacheKey(name: string, environment: string, version: number | undefined): string {
  return `${environment}\u0000${name}\u0000${version ?? ""}`;
}

function parseCacheKey(key: string): { environment: string; name: string } {
  const [environment = "", name = ""] = key.split("\u0000");
  return { environment, name };
}
