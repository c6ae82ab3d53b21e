/**
 * Access tokens: logs in with client credentials on first use
 * (`POST /api/v1/auth/token`), logs in again shortly before the token
 * expires, and after a 401. Concurrent callers share one login.
 */

/** What `POST /api/v1/auth/token` answers. */
export interface TokenAnswer {
  /** The bearer token. */
  accessToken: string;
  /** Always `Bearer`. */
  tokenType: string;
  /** Seconds until the token expires. */
  expiresIn: number;
}

/** A static token, or a function that yields the current one. */
export type TokenProvider = string | (() => string | Promise<string>);

/** Sends the login request (the transport, without authentication). */
export type LoginFunction = (clientId: string, clientSecret: string) => Promise<TokenAnswer>;

/** Where tokens come from. */
export type TokenSourceConfig =
  | { kind: "credentials"; clientId: string; clientSecret: string; refreshMarginMs: number }
  | { kind: "static"; token: TokenProvider }
  | { kind: "none" };

interface CachedToken {
  value: string;
  /** When to log in again (ms since the epoch): before the real expiry. */
  refreshAt: number;
}

/** Hands out the bearer token for each request. */
export class TokenManager {
  private cached: CachedToken | undefined;
  private pending: Promise<CachedToken> | undefined;

  constructor(
    private readonly config: TokenSourceConfig,
    private readonly login: LoginFunction,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Whether a rejected token can be replaced: by logging in again, or by
   * asking a token function again.
   */
  get canRefresh(): boolean {
    return this.config.kind === "credentials" || (this.config.kind === "static" && typeof this.config.token === "function");
  }

  /**
   * The token to send, logging in when there is none yet or it is about to
   * expire; undefined when the client has no credentials.
   */
  async token(): Promise<string | undefined> {
    switch (this.config.kind) {
      case "none":
        return undefined;
      case "static":
        return typeof this.config.token === "string" ? this.config.token : await this.config.token();
      case "credentials": {
        const cached = this.cached;
        if (cached !== undefined && this.now() < cached.refreshAt) {
          return cached.value;
        }
        return (await this.refresh()).value;
      }
    }
  }

  /**
   * Forgets `rejected` (a token the server answered 401 to), so that the
   * next {@link token} logs in again. A newer token obtained meanwhile by a
   * concurrent request is kept.
   */
  invalidate(rejected: string | undefined): void {
    if (this.cached !== undefined && this.cached.value === rejected) {
      this.cached = undefined;
    }
  }

  private refresh(): Promise<CachedToken> {
    if (this.config.kind !== "credentials") {
      return Promise.reject(new Error("no client credentials to log in with"));
    }
    if (this.pending === undefined) {
      const { clientId, clientSecret, refreshMarginMs } = this.config;
      const started = this.now();
      this.pending = this.login(clientId, clientSecret)
        .then((answer) => {
          const lifetimeMs = Math.max(0, answer.expiresIn * 1000);
          // Log in again a margin before expiry: at most a tenth of the
          // token's life, so short-lived tokens are still used.
          const margin = Math.min(refreshMarginMs, lifetimeMs / 10);
          const token = { value: answer.accessToken, refreshAt: started + lifetimeMs - margin };
          this.cached = token;
          return token;
        })
        .finally(() => {
          this.pending = undefined;
        });
    }
    return this.pending;
  }
}
