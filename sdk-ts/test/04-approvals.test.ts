// An approval flow: a policy asks two approvers for a wallet's signatures;
// the request waits, two approver identities approve through the SDK, and
// the signature arrives through signingRequests.wait. Rejection ends a
// request.

import assert from "node:assert/strict";
import { test } from "node:test";

import { CustosError, isPendingApproval } from "@custos/sdk";
import type { SigningRequest } from "@custos/sdk";
import { Transaction } from "ethers";

import { evmTransaction, hasEcdsa, identityClient, rootClient, unique } from "./support.js";

/** Wallets of the protocol the testnet supports best: EVM when it has ECDSA. */
const evm = hasEcdsa();

test("two approvers approve a pending signature, then it is signed", async () => {
  const admin = rootClient();
  const prefix = unique("sdk-treasury");
  const policy = await admin.policies.create({
    name: unique("sdk-two-approvers"),
    priority: 10,
    rules: [
      {
        action: "wallet.sign",
        resource: `wallet:${prefix}*`,
        effect: "require_approval",
        approvals: { count: 2, roles: ["approver"] },
      },
    ],
  });
  assert.ok(!isPendingApproval(policy), "the platform admin's policy takes effect at once");
  assert.equal((await admin.policies.get(policy.id)).rules[0]?.effect, "require_approval");
  assert.ok((await admin.policies.list()).some((listed) => listed.id === policy.id));

  const { client: service } = await identityClient(admin, "service");
  const { client: approver1 } = await identityClient(admin, "approver");
  const { client: approver2 } = await identityClient(admin, "approver");

  const wallet = evm
    ? await admin.wallets.create({ name: `${prefix}-evm`, protocol: "cggmp21", chain: "ethereum", threshold: 2, parties: 3 })
    : await admin.wallets.create({ name: `${prefix}-sol`, protocol: "frost-ed25519", threshold: 2, parties: 3 });
  const input = evm ? { transaction: evmTransaction("5000000000000000000") } : { message: "pay 5" };

  const pending = await service.wallets.sign(wallet.id, input);
  assert.equal(pending.status, "pending_approval");
  assert.ok(pending.approvalId);
  const approvalId = pending.approvalId;

  const listed = await approver1.approvals.list({ status: "pending" });
  const item = listed.find((approval) => approval.id === approvalId);
  assert.ok(item, "the approver sees the pending approval");
  assert.equal(item.required.count, 2);
  assert.equal(item.resource, `wallet:${wallet.name}`);
  assert.equal(item.signingRequestId, pending.requestId);

  const refused = await service.approvals.approve(approvalId).catch((error: unknown) => error);
  assert.ok(refused instanceof CustosError && refused.status === 403, "a service identity cannot approve");

  const first = await approver1.approvals.approve(approvalId, { comment: "checked the invoice" });
  assert.equal(first.status, "pending");
  assert.equal(first.approvals.length, 1);
  const twice = await approver1.approvals.approve(approvalId).catch((error: unknown) => error);
  assert.ok(twice instanceof CustosError);
  assert.deepEqual([twice.status, twice.code], [409, "already_voted"]);
  assert.equal((await service.signingRequests.get(pending.requestId)).status, "pending_approval");

  const second = await approver2.approvals.approve(approvalId);
  assert.equal(second.status, "approved");
  const seen: string[] = [];
  const done: SigningRequest = await service.signingRequests.wait(pending.requestId, {
    onUpdate: (request) => seen.push(request.status),
  });
  assert.equal(done.status, "signed", JSON.stringify(done));
  assert.equal(seen.at(-1), "signed");
  if (evm) {
    assert.equal(Transaction.from(done.rawTransaction).from, wallet.address);
  } else {
    assert.match(String(done.signature), /^[0-9a-f]{128}$/);
  }
  assert.equal((await admin.approvals.get(approvalId)).status, "approved");
});

test("a rejection ends the request, and signAndWait reports it", async () => {
  const admin = rootClient();
  const prefix = unique("sdk-held");
  await admin.policies.create({
    name: unique("sdk-held-policy"),
    priority: 10,
    rules: [{ action: "wallet.sign", resource: `wallet:${prefix}*`, effect: "require_approval", approvals: { count: 1, roles: ["approver"] } }],
  });
  const { client: approver } = await identityClient(admin, "approver");
  const wallet = await admin.wallets.create({ name: `${prefix}-1`, protocol: "frost-taproot", threshold: 2, parties: 3 });
  const waiting = admin.wallets.signAndWait(wallet.id, { digest: "17".repeat(32) }, { initialIntervalMs: 100 });
  let approvalId: string | undefined;
  for (let tries = 0; approvalId === undefined && tries < 100; tries++) {
    const pending = await approver.approvals.list({ status: "pending" });
    approvalId = pending.find((approval) => approval.resource === `wallet:${wallet.name}`)?.id;
    if (approvalId === undefined) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  assert.ok(approvalId, "the approval appears");
  const rejected = await approver.approvals.reject(approvalId, { comment: "not expected" });
  assert.equal(rejected.status, "rejected");
  const done = await waiting;
  assert.equal(done.status, "rejected");
  assert.equal(done.error?.code, "rejected");
});
