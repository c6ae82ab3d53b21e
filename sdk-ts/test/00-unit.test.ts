// Pure behaviour of the SDK that needs no server: backoff, the hydration
// cache's clock rules, error shapes, and both builds loading.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";

import * as esm from "@custos/sdk";
import {
  backoffDelay,
  Custos,
  CustosConnectionError,
  CustosError,
  DEFAULT_RETRY,
  HydrationCache,
  VERSION,
} from "@custos/sdk";

test("backoff uses full jitter inside an exponentially growing, capped window", () => {
  const options = { baseDelayMs: 100, maxDelayMs: 1000 };
  const cases: [retry: number, random: number, expected: number][] = [
    [0, 0, 0],
    [0, 0.999, 99],
    [1, 0.5, 100],
    [2, 0.5, 200],
    [3, 0.999, 799],
    [4, 0.999, 999],
    [10, 0.5, 500],
  ];
  for (const [retry, random, expected] of cases) {
    assert.equal(backoffDelay(retry, options, () => random), expected, `retry ${retry}, random ${random}`);
  }
  assert.deepEqual(DEFAULT_RETRY.retryStatuses, [429, 500, 502, 503, 504]);
});

test("the hydration cache reuses, refetches, falls back when unavailable, and gives up when too old", async () => {
  let now = 1_000_000;
  const stale: number[] = [];
  const cache = new HydrationCache<string>({
    ttlMs: 1000,
    staleTtlMs: 5000,
    now: () => now,
    onStale: (event) => stale.push(event.ageMs),
  });
  let loads = 0;
  const ok = (value: string) => async () => {
    loads += 1;
    return value;
  };
  const down = async (): Promise<string> => {
    throw new CustosConnectionError({ code: "connection_failed", message: "refused", notSent: true });
  };
  const denied = async (): Promise<string> => {
    throw new CustosError({ code: "forbidden", message: "no", status: 403 });
  };

  assert.deepEqual(await cache.get("k", ok("v1")), { value: "v1", stale: false, fromCache: false, fetchedAt: 1_000_000 });
  now += 999;
  assert.equal((await cache.get("k", ok("unused"))).fromCache, true, "within the TTL: no fetch");
  assert.equal(loads, 1);
  now += 1;
  assert.equal((await cache.get("k", ok("v2"))).value, "v2", "at the TTL: fetched again");
  now += 4999;
  const served = await cache.get("k", down);
  assert.deepEqual(served, { value: "v2", stale: true, fromCache: true, fetchedAt: 1_001_000 });
  assert.deepEqual(stale, [4999]);
  await assert.rejects(cache.get("k", denied), { code: "forbidden" }, "a refusal is never hidden by the cache");
  now += 1;
  await assert.rejects(cache.get("k", down), { code: "connection_failed" }, "older than staleTtlMs: the error");
  await assert.rejects(new HydrationCache<string>().get("never", down), { code: "connection_failed" });
});

test("concurrent reads of one key share one fetch", async () => {
  const cache = new HydrationCache<number>();
  let loads = 0;
  const load = async () => {
    loads += 1;
    await new Promise((resolve) => setTimeout(resolve, 20));
    return 42;
  };
  const values = await Promise.all([cache.get("k", load), cache.get("k", load), cache.get("k", load)]);
  assert.deepEqual(values.map((hydrated) => hydrated.value), [42, 42, 42]);
  assert.equal(loads, 1);
});

test("a connection refused fails fast as a typed, retried connection error", async () => {
  // A port nothing listens on: bind one, learn its number, close it.
  const { createServer } = await import("node:net");
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === "object");
  await new Promise((resolve) => server.close(resolve));
  let attempts = 0;
  const custos = new Custos({
    url: `http://127.0.0.1:${address.port}`,
    token: "unused",
    retry: { maxRetries: 2, baseDelayMs: 1, maxDelayMs: 2 },
    fetch: (input, init) => {
      attempts += 1;
      return fetch(input, init);
    },
  });
  // Creating a policy is not idempotent, but a refused connection never
  // reached the server, so it is retried all the same.
  const error = await custos.policies.create({ name: "x", rules: [] }).then(
    () => assert.fail("no server, no answer"),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof CustosConnectionError, String(error));
  assert.equal(error.code, "connection_failed");
  assert.equal(error.status, 0);
  assert.equal(error.notSent, true);
  assert.equal(attempts, 3, "one attempt and two retries");
});

test("the CommonJS build exports the same API, and the version matches package.json", () => {
  const require = createRequire(import.meta.url);
  const cjs = require("@custos/sdk") as typeof esm;
  assert.equal(typeof cjs.Custos, "function");
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  const manifest = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
  assert.equal(VERSION, manifest.version);
});
