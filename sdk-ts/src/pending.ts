import type { PendingApproval } from "./types.js";

/**
 * Whether a write answered `202` with an approval instead of doing it.
 *
 * @example
 * const rotated = await custos.transit.rotateKey("cards");
 * if (isPendingApproval(rotated)) await custos.operations.wait(rotated.operationId!);
 */
export function isPendingApproval<T extends object>(value: T | PendingApproval): value is PendingApproval {
  return (value as { status?: unknown }).status === "pending_approval";
}
