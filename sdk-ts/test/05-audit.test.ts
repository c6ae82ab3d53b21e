// The audit log: filters, pages, and the hash chain's verification.

import assert from "node:assert/strict";
import { test } from "node:test";

import type { AuditRecord } from "@custos/sdk";

import { rootClient, unique } from "./support.js";

test("audit records are filtered and paged, and the chain verifies", async () => {
  const custos = rootClient();
  const keyName = unique("sdk-audited");
  await custos.transit.createKey({ name: keyName });
  const started = Date.now() - 1000;
  for (let index = 0; index < 3; index++) {
    await custos.transit.encrypt({ keyName, plaintext: `item ${index}` });
  }

  const page = await custos.audit.list({ action: "transit.encrypt", resource: `transit-key:${keyName}`, from: new Date(started) });
  assert.equal(page.items.length, 3);
  for (const record of page.items) {
    assert.equal(record.action, "transit.encrypt");
    assert.equal(record.outcome, "success");
    assert.match(record.hash, /^[0-9a-f]{64}$/);
    assert.ok(!JSON.stringify(record).includes("item 0"), "no plaintext in the audit log");
  }
  assert.equal(page.nextCursor, null);

  const records: AuditRecord[] = [];
  for await (const record of custos.audit.iterate({ resource: `transit-key:${keyName}`, limit: 2 })) {
    records.push(record);
  }
  assert.deepEqual(records.map((record) => record.action), ["transit.key.create", "transit.encrypt", "transit.encrypt", "transit.encrypt"]);
  const seqs = records.map((record) => record.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "oldest first");

  const report = await custos.audit.verify();
  assert.equal(report.valid, true, JSON.stringify(report));
  assert.ok(report.entries >= records.length);
  assert.match(report.headHash, /^[0-9a-f]{64}$/);
  assert.equal(report.firstBroken, undefined);
});
