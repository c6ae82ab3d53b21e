// The client against the testnet: health, token handling, typed errors.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Custos, CustosError } from "@custos/sdk";

import { rootClient, unique, url } from "./support.js";

/** Asserts that `promise` rejects with a CustosError and answers it. */
async function custosError(promise: Promise<unknown>): Promise<CustosError> {
  const error = await promise.then(
    () => assert.fail("expected a CustosError"),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof CustosError, `not a CustosError: ${String(error)}`);
  return error;
}

test("health and seal status answer without a token", async () => {
  const custos = new Custos({ url: url() });
  const health = await custos.sys.health();
  assert.equal(health.status, "ok");
  assert.equal(health.sealed, false);
  const seal = await custos.sys.sealStatus();
  assert.equal(seal.initialized, true);
  assert.equal(seal.sealed, false);
  const { publicKey } = await custos.sys.coordinatorKey();
  assert.match(publicKey, /^[0-9a-f]{64}$/, "the key signer nodes pin");
});

test("an unknown transit key is a typed not_found error with the server's request id", async () => {
  const custos = rootClient();
  const error = await custosError(custos.transit.encrypt({ keyName: unique("missing"), plaintext: "x" }));
  assert.equal(error.code, "not_found");
  assert.equal(error.status, 404);
  assert.match(error.requestId ?? "", /^rq_/);
  assert.match(error.message, /transit key/);
});

test("bad input answers its stable code", async () => {
  const custos = rootClient();
  const cases: [what: string, call: () => Promise<unknown>, status: number, code: string][] = [
    ["an invalid wallet name", () => custos.wallets.create({ name: "no spaces", protocol: "frost-ed25519", threshold: 2, parties: 3 }), 422, "invalid_name"],
    ["an unknown transit key type", () => custos.transit.createKey({ name: unique("k"), type: "rot13" as "hmac" }), 422, "invalid_key_type"],
    ["an unknown approval", () => custos.approvals.get("apr_does_not_exist"), 404, "not_found"],
    ["a bad audit cursor", () => custos.audit.list({ cursor: "page-two" }), 422, "invalid_cursor"],
    ["an invalid policy", () => custos.policies.create({ name: unique("p"), rules: [{ action: "wallet.sign", resource: "wallet:*", effect: "require_approval" }] }), 422, "invalid_policy"],
  ];
  for (const [what, call, status, code] of cases) {
    const error = await custosError(call());
    assert.equal(error.status, status, `${what}: ${error}`);
    assert.equal(error.code, code, `${what}: ${error}`);
    assert.ok(error.requestId, `${what}: has a request id`);
  }
});

test("wrong credentials and a missing token are 401 errors", async () => {
  const wrong = new Custos({ url: url(), clientId: "cid_nobody", clientSecret: "nothing" });
  const error = await custosError(wrong.wallets.list());
  assert.equal(error.status, 401);
  const anonymous = new Custos({ url: url() });
  const missing = await custosError(anonymous.wallets.list());
  assert.equal(missing.status, 401);
  assert.equal(missing.code, "unauthenticated");
});

test("the client logs in once, shares the token, and logs in again once after a 401", async () => {
  let logins = 0;
  let spoil = false;
  const custos = rootClient({
    fetch: (input, init) => {
      const target = String(input);
      if (target.endsWith("/api/v1/auth/token")) {
        logins += 1;
      }
      const headers = new Headers(init?.headers);
      if (spoil && headers.has("authorization")) {
        // The server sees a token it never issued, as after a revocation.
        spoil = false;
        headers.set("authorization", "Bearer cst_revoked");
      }
      return fetch(input, { ...init, headers });
    },
  });
  await Promise.all([custos.nodes.list(), custos.wallets.list(), custos.policies.list()]);
  assert.equal(logins, 1, "concurrent first calls share one login");
  await custos.nodes.list();
  assert.equal(logins, 1, "the token is reused");
  spoil = true;
  const nodes = await custos.nodes.list();
  assert.equal(nodes.length, 3);
  assert.equal(logins, 2, "a 401 leads to one new login and the call succeeds");
});

test("a static token works, and the OpenAPI document lists the routes", async () => {
  const root = rootClient();
  const token = await root.accessToken();
  assert.ok(token);
  const custos = new Custos({ url: url(), token: async () => token });
  const nodes = await custos.nodes.list();
  assert.deepEqual(nodes.map((node) => node.status), ["healthy", "healthy", "healthy"]);
  const document = await custos.openapi();
  assert.ok("/api/v1/wallets/{id}/sign" in document.paths);
});
