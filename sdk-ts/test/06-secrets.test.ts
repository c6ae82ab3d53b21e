// Secrets: a round trip with versions and tags, deletion behind two
// approvers, and hydration through the cache.

import assert from "node:assert/strict";
import { test } from "node:test";

import { CustosError, isPendingApproval } from "@custos/sdk";

import { identityClient, rootClient, serverDocuments, unique } from "./support.js";

assert.ok(await serverDocuments("/api/v1/secrets"), "the server documents /api/v1/secrets");

test("secrets round trip with versions and tags", async () => {
  const custos = rootClient();
  const name = `${unique("sdk")}/payments/stripe-key`;
  const environment = "staging";
  const created = await custos.secrets.create({ name, value: "sk_one", environment, tags: ["payments", "sdk"] });
  assert.ok(!isPendingApproval(created), "an admin creates secrets without approval by default");
  assert.equal(created.name, name);
  assert.equal(created.environment, environment);
  assert.equal(created.version, 1);
  assert.deepEqual([...created.tags].sort(), ["payments", "sdk"]);

  const updated = await custos.secrets.update(name, { value: "sk_two", environment });
  assert.ok(!isPendingApproval(updated), "an admin's update needs no approval by default");
  assert.equal(updated.version, 2);

  const latest = await custos.secrets.get(name, { environment });
  assert.deepEqual([latest.value, latest.version], ["sk_two", 2]);
  const first = await custos.secrets.get(name, { environment, version: 1 });
  assert.deepEqual([first.value, first.version], ["sk_one", 1]);

  const tagged = await custos.secrets.list({ environment, tags: ["payments", "sdk"] });
  const listed = tagged.find((item) => item.name === name);
  assert.ok(listed, "listed by its tags");
  assert.ok(!("value" in listed), "a listing carries no values");
  const untagged = await custos.secrets.list({ environment, tags: [unique("no-such-tag")] });
  assert.ok(!untagged.some((item) => item.name === name));

  const rotated = await custos.secrets.rotate(name, { newValue: "sk_three", environment });
  assert.ok(!isPendingApproval(rotated));
  assert.equal(rotated.version, 3);
  assert.equal((await custos.secrets.get(name, { environment })).value, "sk_three");

  const other = await custos.secrets.get(name, { environment: "production" }).catch((error: unknown) => error);
  assert.ok(other instanceof CustosError && other.status === 404, "environments are separate");

  const history = await custos.secrets.versions(name, { environment });
  assert.deepEqual(history.versions.map((version) => version.version), [1, 2, 3]);
  assert.ok(!JSON.stringify(history).includes("sk_"), "versions carry no values");
});

test("deleting a secret waits for two approvers, then the stored operation runs", async () => {
  const admin = rootClient();
  const name = `${unique("sdk")}/old-webhook-key`;
  const environment = "staging";
  await admin.secrets.create({ name, value: "whsec_1", environment });
  // Approvers that exist before the request (separation of duties).
  const { client: approver1 } = await identityClient(admin, "approver");
  const { client: approver2 } = await identityClient(admin, "approver");
  const pending = await admin.secrets.delete(name, { environment });
  assert.ok(isPendingApproval(pending), "deletion needs approval under the default policy");
  assert.ok(pending.operationId);
  assert.equal((await admin.operations.get(pending.operationId)).status, "pending_approval");
  assert.equal((await admin.secrets.get(name, { environment })).value, "whsec_1", "not deleted yet");

  assert.equal((await approver1.approvals.approve(pending.approvalId)).status, "pending");
  assert.equal((await approver2.approvals.approve(pending.approvalId)).status, "approved");
  const operation = await admin.operations.wait(pending.operationId);
  assert.equal(operation.status, "executed", JSON.stringify(operation));
  const gone = await admin.secrets.get(name, { environment }).catch((error: unknown) => error);
  assert.ok(gone instanceof CustosError, String(gone));
  assert.deepEqual([gone.status, gone.code], [410, "secret_deleted"]);

  const restored = await admin.secrets.restore(name, { environment });
  assert.ok(!isPendingApproval(restored), "restoring needs no approval by default");
  assert.equal((await admin.secrets.get(name, { environment })).value, "whsec_1");
});

test("hydrate caches a secret and an update through the client refreshes it", async () => {
  const admin = rootClient();
  const name = `${unique("sdk")}/db-password`;
  const environment = "production";
  await admin.secrets.create({ name, value: "pw-1", environment });
  let requests = 0;
  const { client } = await identityClient(admin, "service");
  const counting = rootClient({
    fetch: (input, init) => {
      if (String(input).includes("/api/v1/secrets/")) requests += 1;
      return fetch(input, init);
    },
  });
  const first = await counting.secrets.hydrate(name, { environment });
  assert.deepEqual([first.value, first.stale, first.fromCache], ["pw-1", false, false]);
  const second = await counting.secrets.hydrate(name, { environment });
  assert.deepEqual([second.value, second.stale, second.fromCache], ["pw-1", false, true]);
  assert.equal(requests, 1, "the second read came from the cache");
  await counting.secrets.update(name, { value: "pw-2", environment });
  assert.equal((await counting.secrets.hydrate(name, { environment })).value, "pw-2");

  // A service identity may read secrets.
  assert.equal((await client.secrets.hydrate(name, { environment })).value, "pw-2");
});
