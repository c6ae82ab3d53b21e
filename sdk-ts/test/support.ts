// Shared by the tests: the testnet that scripts/test-with-testnet.sh
// started (URL and root credentials in the environment), clients for new
// identities, and whether the server documents a route yet.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { Custos, isPendingApproval } from "@custos/sdk";
import type { CustosBaseOptions, Role } from "@custos/sdk";

function required(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    throw new Error(`${name} is not set: run the tests with npm test (scripts/test-with-testnet.sh)`);
  }
  return value;
}

/** The testnet's control plane. */
export const url = (): string => required("CUSTOS_URL");

/** A client of the root identity (admin of the platform org). */
export function rootClient(extra: Omit<CustosBaseOptions, "url"> = {}): Custos {
  return new Custos({
    ...extra,
    url: url(),
    clientId: required("CUSTOS_CLIENT_ID"),
    clientSecret: required("CUSTOS_CLIENT_SECRET"),
  });
}

/** A name no other test uses: test files share one testnet. */
export function unique(prefix: string): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** A new identity with `role`, and a client logged in as it. */
export async function identityClient(
  admin: Custos,
  role: Role,
  name = unique(`sdk-${role}`),
): Promise<{ id: string; client: Custos }> {
  const created = await admin.identities.create({ name, role });
  if (isPendingApproval(created)) {
    throw new Error(`creating ${name} waits for an approval: the tests create identities as the platform admin`);
  }
  return {
    id: created.id,
    client: new Custos({ url: url(), clientId: created.clientId, clientSecret: created.clientSecret }),
  };
}

let documented: Promise<Set<string>> | undefined;

/** Whether the server's OpenAPI document lists `path` (e.g. `/api/v1/secrets`). */
export async function serverDocuments(path: string): Promise<boolean> {
  documented ??= rootClient()
    .openapi()
    .then((document) => new Set(Object.keys(document.paths)));
  return (await documented).has(path);
}

/** The testnet's state file (pids, nodes). */
export function testnetState(): { pids: Record<string, number>; ecdsaCommittee?: boolean } {
  const dir = required("CUSTOS_TESTNET_DIR");
  return JSON.parse(readFileSync(join(dir, "testnet.json"), "utf8")) as {
    pids: Record<string, number>;
    ecdsaCommittee?: boolean;
  };
}

/** Whether the testnet prepared the ECDSA committee (cggmp21 wallets). */
export function hasEcdsa(): boolean {
  return testnetState().ecdsaCommittee === true;
}

/** An EIP-1559 transaction body with quantities as decimal strings. */
export function evmTransaction(value: string, nonce = "7") {
  return {
    chainId: "1",
    nonce,
    to: "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    value,
    gasLimit: "21000",
    maxFeePerGas: "30000000000",
    maxPriorityFeePerGas: "1000000000",
  };
}
