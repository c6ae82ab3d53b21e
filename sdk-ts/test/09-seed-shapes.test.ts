// The seed SDKs' calls work after changing the import and the constructor:
// a default environment for secrets, keys created with usage lists and
// rotation durations and signed by `{ keyId, ... }`, audit filters by key,
// verbs and dates, rules without a kind or an effect, and the `mpc`
// namespace. Signatures are checked with Node's own crypto (OpenSSL), which
// did not make them.

import assert from "node:assert/strict";
import { createPublicKey, createVerify } from "node:crypto";
import { test } from "node:test";

import { CustosError, isPendingApproval } from "@custos/sdk";

import { evmTransaction, hasEcdsa, rootClient, unique } from "./support.js";

test("secrets calls take the client's environment", async () => {
  const environment = unique("production");
  const custos = rootClient({ environment });
  const name = unique("stripe-api-key");
  const created = await custos.secrets.create({ name, value: "sk_live_1", tags: ["payments"] });
  assert.ok(!isPendingApproval(created), "a platform admin's create runs at once");
  assert.equal((await custos.secrets.get(name)).value, "sk_live_1");
  const listed = await custos.secrets.list({ tags: ["payments"] });
  assert.deepEqual(
    listed.map((secret) => [secret.name, secret.environment]),
    [[name, environment]],
  );
  const rotated = await custos.secrets.rotate(name, { newValue: "sk_live_2" });
  assert.ok(!isPendingApproval(rotated));
  assert.equal((await custos.secrets.get(name)).value, "sk_live_2");
  assert.equal((await custos.secrets.hydrate(name)).value, "sk_live_2");
  // A client without an environment refuses a call that names none.
  await assert.rejects(() => rootClient().secrets.get(name), /names no environment/);
});

test("keys are created, signed and verified in the seed shape", async () => {
  const custos = rootClient();
  const key = await custos.keys.create({ type: "ECDSA_SECP256K1", usage: ["sign", "verify"], rotation: "90d" });
  assert.equal(key.usage, "SIGN_VERIFY");
  assert.deepEqual(key.rotation, { periodDays: 90 });
  const message = "release 1.2.3";
  const signed = await custos.keys.sign({ keyId: key.id, message, algorithm: "ECDSA_SHA256" });
  const verifier = createVerify("SHA256");
  verifier.update(message);
  assert.ok(
    verifier.verify(createPublicKey(key.publicKey as string), Buffer.from(signed.signature, "base64")),
    "OpenSSL verifies the signature",
  );
  assert.equal((await custos.keys.verify({ keyId: key.id, message, signature: signed.signature })).valid, true);
  const rotated = await custos.keys.rotate(key.id);
  assert.ok(isPendingApproval(rotated) || rotated.version === 2);

  const page = await custos.audit.list({
    keyId: key.id,
    actions: ["create", "sign", "verify", "access"],
    from: new Date(Date.now() - 3_600_000).toISOString().slice(0, 10),
    to: new Date().toISOString().slice(0, 10),
  });
  assert.deepEqual(
    page.items.map((record) => record.action),
    ["key.create", "key.sign", "key.verify"],
  );
});

test("policies take rules without a kind or an effect", async () => {
  const custos = rootClient();
  const created = await custos.policies.create({
    name: unique("treasury"),
    rules: [
      {
        action: "sign",
        resource: "key:treasury-*",
        conditions: { requireMFA: true, maxAmount: 1000000, allowedIPs: ["10.0.0.0/8"] },
      },
    ],
  });
  assert.ok(!isPendingApproval(created), "a platform admin's policy takes effect at once");
  const rule = created.rules[0];
  assert.equal(rule?.action, "key.sign");
  assert.equal(rule?.effect, "allow");
  assert.equal(rule?.conditions?.maxAmount, "1000000");
});

test("mpc.generateWallet and mpc.sign are the wallets' calls", async () => {
  const custos = rootClient();
  const wallet = await custos.mpc.generateWallet({ chain: "solana", threshold: 2, parties: 3 });
  assert.equal(wallet.protocol, "frost-ed25519");
  const signed = await custos.mpc.sign({ walletId: wallet.id, message: "hello" });
  assert.ok(signed.status === "signed" || signed.status === "queued", signed.status);
  if (!hasEcdsa()) {
    return;
  }
  const evm = await custos.mpc.generateWallet({ chain: "polygon", threshold: 2, parties: 3 });
  assert.equal(evm.protocol, "cggmp21");
  const { chainId: _chainId, nonce: _nonce, gasLimit: _gas, ...partial } = evmTransaction("1");
  await assert.rejects(
    () => custos.mpc.sign({ walletId: evm.id, transaction: partial as never }),
    (error: unknown) =>
      error instanceof CustosError && error.status === 422 && /chainId, nonce/.test(error.message),
  );
});
