// Stale fallback: values hydrated while the control plane runs are served,
// marked stale and reported, after it is stopped; values older than the
// stale limit are not. This file runs last: it stops the control plane
// (the test script stops the rest of the testnet afterwards).
//
// Through `secrets.hydrate` when the server has secrets; always through the
// same cache (`HydrationCache`) hydrating a credential that is kept
// encrypted under a transit key, the envelope pattern services use before
// a secrets store exists.

import assert from "node:assert/strict";
import { setTimeout as delay } from "node:timers/promises";
import { test } from "node:test";

import { Custos, CustosConnectionError, HydrationCache } from "@custos/sdk";
import type { SecretStaleEvent, StaleEvent } from "@custos/sdk";

import { rootClient, serverDocuments, testnetState, unique, url } from "./support.js";

const hasSecrets = await serverDocuments("/api/v1/secrets");
assert.ok(hasSecrets, "the server documents /api/v1/secrets");
const MINUTE = 60_000;

async function stopControlPlane(): Promise<void> {
  const pid = testnetState().pids["control-plane"];
  assert.ok(pid, "the testnet records the control plane's pid");
  process.kill(pid, "SIGTERM");
  const probe = new Custos({ url: url(), retry: false, timeoutMs: 2000 });
  for (let tries = 0; tries < 100; tries++) {
    const down = await probe.sys.health().then(() => false, () => true);
    if (down) return;
    await delay(100);
  }
  assert.fail("the control plane still answers after SIGTERM");
}

test("cached values are served stale, and reported, once the server is stopped", async (t) => {
  // A clock the test moves: the real requests happen at real times, the
  // cache's ages are what this clock says.
  let clock = Date.now();
  const now = (): number => clock;

  // Before the stop: hydrate through secrets (when the server has them) ...
  const secretEvents: SecretStaleEvent[] = [];
  const secretClient = rootClient({
    secrets: { ttlMs: 5 * MINUTE, staleTtlMs: 30 * MINUTE, now, onStale: (event) => secretEvents.push(event) },
    retry: { maxRetries: 1, baseDelayMs: 10 },
  });
  const secretName = `${unique("sdk")}/payments/api-key`;
  if (hasSecrets) {
    await secretClient.secrets.create({ name: secretName, value: "sk_live_1", environment: "production" });
    const fresh = await secretClient.secrets.hydrate(secretName, { environment: "production" });
    assert.deepEqual([fresh.value, fresh.stale], ["sk_live_1", false]);
  }

  // ... and through the cache with a transit-encrypted credential.
  const admin = rootClient({ retry: { maxRetries: 1, baseDelayMs: 10 } });
  const keyName = unique("sdk-envelope");
  await admin.transit.createKey({ name: keyName });
  const { ciphertext } = await admin.transit.encrypt({ keyName, plaintext: "db-password-1" });
  const cacheEvents: StaleEvent[] = [];
  const cache = new HydrationCache<string>({ ttlMs: 5 * MINUTE, staleTtlMs: 30 * MINUTE, now, onStale: (event) => cacheEvents.push(event) });
  const load = async (): Promise<string> => (await admin.transit.decrypt({ keyName, ciphertext })).plaintext;
  assert.deepEqual((await cache.get("db-password", load)).stale, false);

  await stopControlPlane();

  await t.test("a fresh read now fails fast with a connection error", async () => {
    const error = await admin.transit.decrypt({ keyName, ciphertext }).catch((caught: unknown) => caught);
    assert.ok(error instanceof CustosConnectionError, String(error));
    assert.equal(error.code, "connection_failed");
    assert.equal(error.notSent, true);
  });

  await t.test("within the TTL the cached value is simply reused", async () => {
    clock += 4 * MINUTE;
    const hydrated = await cache.get("db-password", load);
    assert.deepEqual([hydrated.value, hydrated.stale, hydrated.fromCache], ["db-password-1", false, true]);
    assert.equal(cacheEvents.length, 0);
  });

  await t.test("past the TTL and within the stale limit: served stale and reported", async () => {
    clock += 20 * MINUTE;
    const hydrated = await cache.get("db-password", load);
    assert.deepEqual([hydrated.value, hydrated.stale, hydrated.fromCache], ["db-password-1", true, true]);
    assert.equal(cacheEvents.length, 1);
    assert.equal(cacheEvents[0]?.ageMs, 24 * MINUTE);
    assert.equal(cacheEvents[0]?.error.code, "connection_failed");
  });

  await t.test("secrets.hydrate serves the stale secret with stale: true and calls onStale", { skip: hasSecrets ? false : "the server has no /api/v1/secrets yet: covered through HydrationCache above" }, async () => {
    const perCall: SecretStaleEvent[] = [];
    const hydrated = await secretClient.secrets.hydrate(secretName, {
      environment: "production",
      onStale: (event) => perCall.push(event),
    });
    assert.deepEqual([hydrated.value, hydrated.stale, hydrated.fromCache], ["sk_live_1", true, true]);
    assert.equal(perCall.length, 1);
    assert.equal(secretEvents.length, 1);
    assert.deepEqual([secretEvents[0]?.name, secretEvents[0]?.environment], [secretName, "production"]);
    assert.equal(secretEvents[0]?.ageMs, 24 * MINUTE);
  });

  await t.test("older than the stale limit: the connection error, not the value", async () => {
    clock += 7 * MINUTE;
    await assert.rejects(cache.get("db-password", load), { code: "connection_failed" });
    if (hasSecrets) {
      await assert.rejects(secretClient.secrets.hydrate(secretName, { environment: "production" }), { code: "connection_failed" });
    }
  });
});
