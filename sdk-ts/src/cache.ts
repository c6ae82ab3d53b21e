/**
 * A read-through cache for credentials and other values an application
 * hydrates at start and re-reads often: values are reused for `ttlMs`
 * (5 minutes by default); after that the next read goes to the server, and
 * when the server cannot be reached a cached value up to `staleTtlMs`
 * (30 minutes by default) old is served instead, marked stale and reported
 * through `onStale`.
 *
 * Only unavailability falls back to the cache (no answer, a timeout, or a
 * 5xx): a 403 or 404 is passed on, so revoking access or deleting a secret
 * takes effect at the next read after `ttlMs`.
 */

import { CustosError } from "./errors.js";

/** How long values live in a {@link HydrationCache}. */
export interface HydrationCacheOptions {
  /** Reuse a fetched value for this long without asking the server. Default 5 minutes. */
  ttlMs?: number;
  /** When the server cannot be reached, serve a value up to this old. Default 30 minutes. */
  staleTtlMs?: number;
  /** Called each time a stale value is served instead of a fresh one. */
  onStale?: (event: StaleEvent) => void;
  /** The clock (ms since the epoch); for tests. */
  now?: () => number;
}

/** Reported when a stale value is served. */
export interface StaleEvent {
  /** The cache key (for secrets: `environment/name[@version]`). */
  key: string;
  /** How old the served value is, in ms. */
  ageMs: number;
  /** When the served value was fetched (Unix ms). */
  fetchedAt: number;
  /** Why the server could not give a fresh value. */
  error: CustosError;
}

/** A value from a {@link HydrationCache}. */
export interface Hydrated<T> {
  value: T;
  /** True when the server could not be reached and an older value was served. */
  stale: boolean;
  /** Whether the value came from the cache rather than from the server just now. */
  fromCache: boolean;
  /** When the value was fetched from the server (Unix ms). */
  fetchedAt: number;
}

/** Default of {@link HydrationCacheOptions.ttlMs}: 5 minutes. */
export const DEFAULT_CACHE_TTL_MS = 5 * 60 * 1000;
/** Default of {@link HydrationCacheOptions.staleTtlMs}: 30 minutes. */
export const DEFAULT_STALE_TTL_MS = 30 * 60 * 1000;

interface Entry<T> {
  value: T;
  fetchedAt: number;
}

/** Whether `error` means the server could not give an answer (not a refusal). */
export function isUnavailable(error: unknown): error is CustosError {
  return error instanceof CustosError && (error.status === 0 || error.status >= 500);
}

/**
 * A read-through cache with a stale fallback (see the module comment).
 * Concurrent reads of one key share one fetch.
 *
 * @example
 * const cache = new HydrationCache<string>({ ttlMs: 60_000 });
 * const { value, stale } = await cache.get("db-password", () => loadIt());
 */
export class HydrationCache<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private readonly inFlight = new Map<string, Promise<Entry<T>>>();
  readonly ttlMs: number;
  readonly staleTtlMs: number;
  private readonly onStale: ((event: StaleEvent) => void) | undefined;
  private readonly now: () => number;

  constructor(options: HydrationCacheOptions = {}) {
    this.ttlMs = options.ttlMs ?? DEFAULT_CACHE_TTL_MS;
    this.staleTtlMs = Math.max(options.staleTtlMs ?? DEFAULT_STALE_TTL_MS, this.ttlMs);
    this.onStale = options.onStale;
    this.now = options.now ?? Date.now;
  }

  /**
   * The value of `key`: the cached one while younger than `ttlMs`, else a
   * fresh one from `load`; when `load` fails because the server cannot be
   * reached, the cached one while younger than `staleTtlMs` (reported to
   * the per-call `onStale`, then the cache's). Any other failure is thrown.
   */
  async get(
    key: string,
    load: () => Promise<T>,
    onStale?: (event: StaleEvent) => void,
  ): Promise<Hydrated<T>> {
    const cached = this.entries.get(key);
    if (cached !== undefined && this.now() - cached.fetchedAt < this.ttlMs) {
      return { value: cached.value, stale: false, fromCache: true, fetchedAt: cached.fetchedAt };
    }
    try {
      const fresh = await this.fetch(key, load);
      return { value: fresh.value, stale: false, fromCache: false, fetchedAt: fresh.fetchedAt };
    } catch (error) {
      // Read the entry again: a concurrent read may have refreshed it.
      const fallback = this.entries.get(key);
      if (!isUnavailable(error) || fallback === undefined) {
        throw error;
      }
      const ageMs = this.now() - fallback.fetchedAt;
      if (ageMs >= this.staleTtlMs) {
        throw error;
      }
      const event: StaleEvent = { key, ageMs, fetchedAt: fallback.fetchedAt, error };
      onStale?.(event);
      this.onStale?.(event);
      return { value: fallback.value, stale: true, fromCache: true, fetchedAt: fallback.fetchedAt };
    }
  }

  /** Stores a value as fetched now (after a write, for instance). */
  set(key: string, value: T): void {
    this.entries.set(key, { value, fetchedAt: this.now() });
  }

  /** Forgets one key, or every key when none is given. */
  invalidate(key?: string): void {
    if (key === undefined) {
      this.entries.clear();
    } else {
      this.entries.delete(key);
    }
  }

  /** Keys that have a cached value. */
  keys(): string[] {
    return [...this.entries.keys()];
  }

  private fetch(key: string, load: () => Promise<T>): Promise<Entry<T>> {
    let pending = this.inFlight.get(key);
    if (pending === undefined) {
      pending = load()
        .then((value) => {
          const entry = { value, fetchedAt: this.now() };
          this.entries.set(key, entry);
          return entry;
        })
        .finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, pending);
    }
    return pending;
  }
}
