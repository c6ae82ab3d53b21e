// Transit: encrypt, decrypt, rotate, rewrap, batches, data keys, signing.

import assert from "node:assert/strict";
import { test } from "node:test";

import { CustosError, isPendingApproval } from "@custos/sdk";

import { identityClient, rootClient, unique } from "./support.js";

test("encrypt, decrypt, rotate and rewrap round trip, bound to their context", async () => {
  const admin = rootClient();
  const { client: service } = await identityClient(admin, "service");
  const keyName = unique("sdk-payments");
  const key = await admin.transit.createKey({ name: keyName });
  assert.deepEqual([key.name, key.type, key.latestVersion], [keyName, "aes256-gcm96", 1]);

  const card = "4111 1111 1111 1111";
  const encrypted = await service.transit.encrypt({ keyName, plaintext: card, context: "customer-42" });
  assert.match(encrypted.ciphertext, /^vault:v1:/);
  assert.equal(encrypted.keyVersion, 1);
  const decrypted = await service.transit.decrypt({ keyName, ciphertext: encrypted.ciphertext, context: "customer-42" });
  assert.equal(decrypted.plaintext, card);
  await assert.rejects(
    service.transit.decrypt({ keyName, ciphertext: encrypted.ciphertext, context: "customer-43" }),
    (error: unknown) => error instanceof CustosError && error.status === 400,
    "another context does not decrypt",
  );

  // Rotation needs another admin's approval under the default policy (an
  // admin that exists before the request: one the requester makes
  // afterwards would not count).
  const { client: secondAdmin } = await identityClient(admin, "admin");
  const rotation = await admin.transit.rotateKey(keyName);
  if (isPendingApproval(rotation)) {
    assert.ok(rotation.operationId, "a stored operation");
    const approved = await secondAdmin.approvals.approve(rotation.approvalId);
    assert.equal(approved.status, "approved");
    const operation = await admin.operations.wait(rotation.operationId);
    assert.equal(operation.status, "executed", JSON.stringify(operation));
  } else {
    assert.equal(rotation.latestVersion, 2);
  }
  const rewrapped = await service.transit.rewrap({ keyName, ciphertext: encrypted.ciphertext, context: "customer-42" });
  assert.match(rewrapped.ciphertext, /^vault:v2:/);
  assert.ok(!JSON.stringify(rewrapped).includes(card), "rewrap never answers the plaintext");
  const again = await service.transit.decrypt({ keyName, ciphertext: rewrapped.ciphertext, context: "customer-42" });
  assert.equal(again.plaintext, card);
  assert.equal((await service.transit.getKey(keyName)).latestVersion, 2);
});

test("batches keep order and report errors per item; binary data goes as base64", async () => {
  const admin = rootClient();
  const keyName = unique("sdk-batch");
  await admin.transit.createKey({ name: keyName, type: "chacha20-poly1305" });
  const batch = await admin.transit.encryptBatch({ keyName, batch: [{ plaintext: "one" }, { plaintext: "two" }] });
  const ciphertexts = batch.map((item) => {
    assert.ok("ciphertext" in item, JSON.stringify(item));
    return item.ciphertext;
  });
  const decrypted = await admin.transit.decryptBatch({
    keyName,
    batch: [{ ciphertext: ciphertexts[1] ?? "" }, { ciphertext: "vault:v1:AAAA" }, { ciphertext: ciphertexts[0] ?? "" }],
  });
  assert.deepEqual(decrypted[0], { plaintext: "two" });
  assert.ok("error" in (decrypted[1] ?? {}), "the broken item has its own error");
  assert.deepEqual(decrypted[2], { plaintext: "one" });

  const bytes = Buffer.from([0, 255, 1, 254]).toString("base64");
  const encrypted = await admin.transit.encrypt({ keyName, plaintext: bytes, encoding: "base64" });
  const decoded = await admin.transit.decrypt({ keyName, ciphertext: encrypted.ciphertext, encoding: "base64" });
  assert.equal(decoded.plaintext, bytes);
});

test("data keys come wrapped (and in plaintext unless wrappedOnly), and unwrap by decrypt", async () => {
  const admin = rootClient();
  const keyName = unique("sdk-datakey");
  await admin.transit.createKey({ name: keyName });
  const datakey = await admin.transit.datakey({ keyName });
  assert.equal(Buffer.from(datakey.plaintext ?? "", "base64").length, 32);
  const unwrapped = await admin.transit.decrypt({ keyName, ciphertext: datakey.ciphertext, encoding: "base64" });
  assert.equal(unwrapped.plaintext, datakey.plaintext);
  const wrappedOnly = await admin.transit.datakey({ keyName, wrappedOnly: true });
  assert.equal(wrappedOnly.plaintext, undefined);
  assert.match(wrappedOnly.ciphertext, /^vault:v1:/);
});

test("transit signatures verify, and HMACs are deterministic", async () => {
  const admin = rootClient();
  const signer = unique("sdk-signer");
  await admin.transit.createKey({ name: signer, type: "ed25519" });
  const input = Buffer.from("invoice 1001").toString("base64");
  const { signature } = await admin.transit.sign({ keyName: signer, input });
  assert.match(signature, /^vault:v1:/);
  assert.deepEqual(await admin.transit.verify({ keyName: signer, input, signature }), { valid: true });
  const other = Buffer.from("invoice 1002").toString("base64");
  assert.deepEqual(await admin.transit.verify({ keyName: signer, input: other, signature }), { valid: false });

  const macKey = unique("sdk-hmac");
  await admin.transit.createKey({ name: macKey, type: "hmac" });
  const first = await admin.transit.hmac({ keyName: macKey, input });
  const second = await admin.transit.hmac({ keyName: macKey, input });
  assert.equal(first.hmac, second.hmac);
});
