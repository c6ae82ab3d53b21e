import type { RequestOptions, Transport } from "../transport.js";
import type { AuditFilter, AuditPage, AuditRecord, AuditVerifyReport } from "../types.js";

function millis(value: number | Date | string | undefined): number | string | undefined {
  return value instanceof Date ? value.getTime() : value;
}

/** `/api/v1/audit`: the org's hash-chained audit log. */
export class AuditApi {
  constructor(private readonly transport: Transport) {}

  /**
   * One page of audit records, oldest first, with filters; pass
   * `nextCursor` as `cursor` for the next page.
   */
  async list(filter: AuditFilter = {}, options?: RequestOptions): Promise<AuditPage> {
    const answer = await this.transport.request<AuditPage>({
      method: "GET",
      path: "/api/v1/audit",
      query: {
        action: filter.action,
        actions: filter.actions === undefined ? undefined : filter.actions.join(","),
        keyId: filter.keyId,
        resource: filter.resource,
        identity: filter.identity,
        from: millis(filter.from),
        to: millis(filter.to),
        cursor: filter.cursor,
        limit: filter.limit,
      },
      idempotent: true,
      options,
    });
    return { items: answer.body.items, nextCursor: answer.body.nextCursor ?? null };
  }

  /**
   * Every record matching `filter`, page by page.
   *
   * @example
   * for await (const record of custos.audit.iterate({ action: "wallet.sign*" })) { ... }
   */
  async *iterate(filter: AuditFilter = {}, options?: RequestOptions): AsyncGenerator<AuditRecord, void, undefined> {
    let cursor = filter.cursor;
    for (;;) {
      const page = await this.list({ ...filter, cursor }, options);
      yield* page.items;
      if (page.nextCursor === null || page.items.length === 0) {
        return;
      }
      cursor = page.nextCursor;
    }
  }

  /** Recomputes the org's hash chain: `valid` is false if any record was altered. */
  async verify(options?: RequestOptions): Promise<AuditVerifyReport> {
    const answer = await this.transport.request<AuditVerifyReport>({
      method: "GET", path: "/api/v1/audit/verify", idempotent: true, options,
    });
    return answer.body;
  }
}
