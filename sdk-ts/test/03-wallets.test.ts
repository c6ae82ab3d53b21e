// MPC wallets and signing: the EVM transaction the SDK gets back recovers,
// with ethers, to the wallet's address.

import assert from "node:assert/strict";
import { test } from "node:test";

import { CustosError, isPendingApproval } from "@custos/sdk";
import type { EcdsaSignature, Wallet } from "@custos/sdk";
import { computeAddress, Signature, SigningKey, Transaction, verifyMessage } from "ethers";

import { evmTransaction, hasEcdsa, identityClient, rootClient, unique } from "./support.js";

const ecdsa = hasEcdsa();
const noEcdsa = ecdsa ? false : "the testnet has no ECDSA committee (CUSTOS_NO_ECDSA=1)";

test("nodes are listed with their health", async () => {
  const nodes = await rootClient().nodes.list();
  assert.equal(nodes.length, 3);
  for (const node of nodes) {
    assert.equal(node.status, "healthy", JSON.stringify(node));
    assert.match(node.peerId, /^[0-9a-f]{64}$/);
  }
});

test("the testnet's ECDSA committee shows its aux-info preparation", { skip: noEcdsa }, async () => {
  const committees = await rootClient().nodes.committees();
  const prepared = committees.find((committee) => committee.nodes.length === 3);
  assert.ok(prepared, JSON.stringify(committees));
  assert.equal(prepared.ready, true);
  assert.ok(prepared.runs >= 1 && prepared.runs <= 3, `runs ${prepared.runs}`);
  assert.equal(prepared.preparingSince, null, "no preparation under way");
  assert.equal(typeof prepared.updatedAt, "number");
});

test("an EVM wallet signs an EIP-1559 transaction that ethers recovers to its address", { skip: noEcdsa }, async () => {
  const custos = rootClient();
  const wallet: Wallet = await custos.wallets.create({
    name: unique("sdk-evm"), protocol: "cggmp21", chain: "ethereum", threshold: 2, parties: 3,
  });
  assert.equal(wallet.protocol, "cggmp21");
  assert.equal(computeAddress(`0x${wallet.publicKey}`), wallet.address, "the address is the key's EIP-55 address");
  assert.equal((await custos.wallets.get(wallet.id)).address, wallet.address);
  assert.ok((await custos.wallets.list()).some((listed) => listed.id === wallet.id));

  const signed = await custos.wallets.sign(wallet.id, { transaction: evmTransaction("1000") });
  assert.equal(signed.status, "signed");
  assert.ok(signed.rawTransaction, "a raw transaction");
  const transaction = Transaction.from(signed.rawTransaction);
  assert.equal(transaction.from, wallet.address, "ethers recovers the wallet's address");
  assert.equal(transaction.type, 2);
  assert.equal(transaction.value, 1000n);
  assert.equal(transaction.nonce, 7);
  assert.equal(transaction.chainId, 1n);
  assert.equal(transaction.hash, signed.txHash);
  assert.equal(transaction.unsignedHash, signed.digest);

  // An EIP-191 message.
  const message = await custos.wallets.sign(wallet.id, { message: "hello custos" });
  const signature = message.signature as EcdsaSignature;
  assert.ok(signature.v === 27 || signature.v === 28);
  const recovered = verifyMessage("hello custos", Signature.from({ r: signature.r, s: signature.s, v: signature.v }));
  assert.equal(recovered, wallet.address);

  // A digest at an HD child verifies under the child's key.
  const child = await custos.wallets.address(wallet.id, "m/0/5");
  assert.notEqual(child.address, wallet.address);
  const digest = `0x${"42".repeat(32)}`;
  const childSigned = await custos.wallets.sign(wallet.id, { digest, derivationPath: "m/0/5" });
  const childSignature = childSigned.signature as EcdsaSignature;
  const recoveredKey = SigningKey.recoverPublicKey(
    digest,
    Signature.from({ r: childSignature.r, s: childSignature.s, v: 27 + (childSignature.v % 27) }),
  );
  assert.equal(computeAddress(recoveredKey), child.address);
});

test("one idempotency key makes one request; the SDK adds one when none is given", async () => {
  const custos = rootClient();
  const wallet = await custos.wallets.create({ name: unique("sdk-ed25519"), protocol: "frost-ed25519", threshold: 2, parties: 3 });
  const digest = "09".repeat(32);
  const idempotencyKey = unique("order");
  const first = await custos.wallets.sign(wallet.id, { digest, idempotencyKey });
  const again = await custos.wallets.sign(wallet.id, { digest, idempotencyKey });
  assert.equal(first.status, "signed");
  assert.equal(again.requestId, first.requestId);
  assert.equal(again.signature, first.signature);
  const conflict = await custos.wallets.sign(wallet.id, { digest: "08".repeat(32), idempotencyKey }).catch((error: unknown) => error);
  assert.ok(conflict instanceof CustosError);
  assert.deepEqual([conflict.status, conflict.code], [409, "idempotency_conflict"]);

  // Without a key, two calls are two requests (each got its own key).
  const one = await custos.wallets.sign(wallet.id, { digest });
  const two = await custos.wallets.sign(wallet.id, { digest });
  assert.notEqual(one.requestId, two.requestId);
  const fetched = await custos.signingRequests.get(one.requestId);
  assert.equal(fetched.status, "signed");
  assert.equal(fetched.signature, one.signature);
});

test("share backups are made, listed and restored after an admin's approval", async () => {
  const custos = rootClient();
  const wallet = await custos.wallets.create({ name: unique("sdk-backup"), protocol: "frost-taproot", threshold: 2, parties: 3 });
  const made = await custos.wallets.backup(wallet.id);
  assert.deepEqual(made.failed, []);
  assert.equal(made.backups.length, 3);
  for (const backup of made.backups) {
    assert.equal(backup.generation, 0);
    assert.equal(backup.curve, "secp256k1");
    assert.match(backup.metaDigest, /^[0-9a-f]{64}$/);
    assert.equal((backup as unknown as Record<string, unknown>).sealed, undefined, "no sealed bytes in answers");
  }
  const listed = await custos.wallets.listBackups(wallet.id);
  assert.deepEqual(new Set(listed.map((backup) => backup.id)), new Set(made.backups.map((backup) => backup.id)));

  // Restoring waits for another admin; then the node takes its share back.
  const backup = made.backups[0]!;
  const { client: admin2 } = await identityClient(custos, "admin");
  const pending = await custos.wallets.restoreBackup(wallet.id, backup.id);
  assert.ok(isPendingApproval(pending), JSON.stringify(pending));
  await admin2.approvals.approve(pending.approvalId);
  const done = await custos.operations.wait(pending.operationId!);
  assert.equal(done.status, "executed", JSON.stringify(done));
  assert.equal((done.result as unknown as Record<string, unknown>).node, backup.node);
  const signed = await custos.wallets.sign(wallet.id, { digest: "0a".repeat(32) });
  assert.equal(signed.status, "signed");

  const wrongNode = await custos.wallets
    .restoreBackup(wallet.id, backup.id, { node: backup.node === "node-1" ? "node-2" : "node-1" })
    .catch((error: unknown) => error);
  assert.ok(wrongNode instanceof CustosError);
  assert.deepEqual([wrongNode.status, wrongNode.code], [409, "restore_party_mismatch"]);
});
