// The key registry: encrypt/decrypt, sign/verify, rotation (behind an
// approval under the default policy). Skipped with a message against a
// server without /api/v1/keys.

import assert from "node:assert/strict";
import { test } from "node:test";

import { isPendingApproval } from "@custos/sdk";

import { rootClient, serverDocuments, unique } from "./support.js";

assert.ok(await serverDocuments("/api/v1/keys"), "the server documents /api/v1/keys");

test("registry keys encrypt, decrypt, sign and verify", async () => {
  const custos = rootClient();
  const aes = await custos.keys.create({ name: unique("sdk-aes"), type: "AES_256", usage: "ENCRYPT_DECRYPT" });
  assert.equal(aes.type, "AES_256");
  assert.equal(aes.version, 1);
  const { ciphertext } = await custos.keys.encrypt(aes.id, { plaintext: "top secret" });
  assert.equal((await custos.keys.decrypt(aes.id, { ciphertext })).plaintext, "top secret");

  const signer = await custos.keys.create({ name: unique("sdk-p256"), type: "ECDSA_P256", usage: "SIGN_VERIFY" });
  assert.ok(signer.publicKey, "an asymmetric key shows its public key");
  const { signature } = await custos.keys.sign(signer.id, { message: "release 1.2.3" });
  assert.equal((await custos.keys.verify(signer.id, { message: "release 1.2.3", signature })).valid, true);
  assert.equal((await custos.keys.verify(signer.id, { message: "release 1.2.4", signature })).valid, false);

  const rotated = await custos.keys.rotate(aes.id);
  if (!isPendingApproval(rotated)) {
    assert.equal(rotated.version, 2);
    assert.equal((await custos.keys.decrypt(aes.id, { ciphertext })).plaintext, "top secret", "old versions still decrypt");
  }
});
