// Security through the SDK: a frozen wallet signs nothing until another
// admin approves unfreezing it; an identity is cut off at once (disabled,
// tokens revoked) and rotates its own secret; separation of duties holds
// for an org admin's policy change.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Custos, CustosError, isPendingApproval } from "@custos/sdk";

import { identityClient, rootClient, unique, url } from "./support.js";

test("a frozen wallet signs nothing until another admin approves unfreezing it", async () => {
  const root = rootClient();
  const { client: admin } = await identityClient(root, "admin");
  const { client: service } = await identityClient(root, "service");
  const wallet = await root.wallets.create({ name: unique("sdk-frozen"), protocol: "frost-ed25519", threshold: 2, parties: 3 });
  assert.equal(wallet.frozen, false);

  const frozen = await root.wallets.freeze(wallet.id, "incident drill");
  assert.equal(frozen.frozen, true);
  assert.equal(frozen.freeze?.reason, "incident drill");
  assert.equal((await root.wallets.get(wallet.id)).frozen, true);
  const refused = await service.wallets.sign(wallet.id, { message: "pay" }).catch((error: unknown) => error);
  assert.ok(refused instanceof CustosError);
  assert.deepEqual([refused.status, refused.code], [409, "wallet_frozen"]);

  const pending = await admin.wallets.unfreeze(wallet.id);
  assert.ok(isPendingApproval(pending), "unfreezing waits for an approval");
  await root.approvals.approve(pending.approvalId);
  assert.equal((await root.wallets.get(wallet.id)).frozen, false);
  const signed = await service.wallets.sign(wallet.id, { message: "pay" });
  assert.equal(signed.status, "signed");
});

test("an identity is cut off at once and rotates only its own secret", async () => {
  const root = rootClient();
  const name = unique("sdk-cutoff");
  const created = await root.identities.create({ name, role: "service" });
  assert.ok(!isPendingApproval(created));
  const client = new Custos({ url: url(), clientId: created.clientId, clientSecret: created.clientSecret });
  await client.wallets.list();
  const tokens = await root.identities.tokens(created.id);
  assert.ok(tokens.length >= 1);
  assert.ok(tokens.every((token) => token.id.startsWith("tok_") && !("token" in token)));

  // Rotation: the old secret stops working, the new one works.
  const rotated = await client.identities.rotateSecret(created.id, created.clientSecret);
  assert.notEqual(rotated.clientSecret, created.clientSecret);
  const renewed = new Custos({ url: url(), clientId: created.clientId, clientSecret: rotated.clientSecret });
  await renewed.wallets.list();
  const stale = new Custos({ url: url(), clientId: created.clientId, clientSecret: created.clientSecret, retry: false });
  const refusedLogin = await stale.wallets.list().catch((error: unknown) => error);
  assert.ok(refusedLogin instanceof CustosError && refusedLogin.status === 401, String(refusedLogin));

  // Disabling cuts it off; its identity shows it.
  const disabled = await root.identities.disable(created.id);
  assert.equal(disabled.status, "disabled");
  assert.equal((await root.identities.tokens(created.id)).length, 0);
  await new Promise((resolve) => setTimeout(resolve, 1100));
  const refused = await renewed.wallets.list().catch((error: unknown) => error);
  assert.ok(refused instanceof CustosError && [401, 403].includes(refused.status), String(refused));
});

test("an org admin's policy change waits for another admin", async () => {
  const root = rootClient();
  const org = await root.orgs.create({ name: unique("sdk-org") });
  const first = await root.identities.create({ name: "admin-1", role: "admin", orgId: org.id });
  const second = await root.identities.create({ name: "admin-2", role: "admin", orgId: org.id });
  assert.ok(!isPendingApproval(first) && !isPendingApproval(second));
  const admin1 = new Custos({ url: url(), clientId: first.clientId, clientSecret: first.clientSecret });
  const admin2 = new Custos({ url: url(), clientId: second.clientId, clientSecret: second.clientSecret });
  const pending = await admin1.policies.create({
    name: "lockdown",
    rules: [{ action: "wallet.sign", resource: "*", effect: "deny" }],
  });
  assert.ok(isPendingApproval(pending));
  assert.ok(!(await admin1.policies.list()).some((policy) => policy.name === "lockdown"));
  await admin2.approvals.approve(pending.approvalId);
  assert.ok((await admin1.policies.list()).some((policy) => policy.name === "lockdown"));
});
