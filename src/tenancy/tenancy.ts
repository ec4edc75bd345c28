/** What the route API does for tenancy on each call: keep the caller's key, claim unowned routes, say whether a VM can be reached. */
import type { Database } from "../db/client.ts";
import { claimUnownedRoutes } from "../db/credentials.repo.ts";
import type { Logger } from "../log.ts";
import type { VmAccessError } from "../vms/platform.ts";
import type { OwnerKeys } from "./owner-keys.ts";
import type { TenantPlatform } from "./tenant-platform.ts";

export class Tenancy {
  constructor(
    readonly keys: OwnerKeys,
    readonly platform: TenantPlatform,
    private readonly database: Database,
    private readonly log: Logger,
  ) {}

  /** A call whose key the verifier accepted for `userId`: keep or replace it if they own a route (never throws). */
  offer(userId: string, key: string, created = false): Promise<void> {
    return this.keys.offer(userId, key, created);
  }

  /**
   * `userId`'s key sees `vmId` (the platform said so): routes of that VM without an owner become
   * theirs, and their key is kept for them.
   */
  async claim(vmId: string, userId: string, key: string): Promise<void> {
    const n = await claimUnownedRoutes(this.database, vmId, userId);
    if (!n) return;
    this.log.info("routes without an owner claimed by their vm's owner", { vm_id: vmId, owner: userId, routes: n });
    await this.keys.offer(userId, key, true);
  }

  /** Whether hatch-proxy can act on `vmId` without its owner's help. */
  access(vmId: string): Promise<{ ok: true } | { ok: false; problem: VmAccessError }> {
    return this.platform.access(vmId);
  }
}
