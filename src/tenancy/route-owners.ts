/** Who owns the routes of each VM, as last read: a lookup while the database is away answers from it. */
import type { Database } from "../db/client.ts";
import { routeOwnersOfVm } from "../db/credentials.repo.ts";

const MAX_REMEMBERED_VMS = 200_000;

export class RouteOwners {
  private readonly known = new Map<string, string[]>();

  constructor(
    private readonly database: Database,
    /** Per user, an owner never read cannot be guessed; single-tenant, every route's owner is '' anyway. */
    private readonly perUser: boolean,
  ) {}

  /** The owners of `vmId`'s routes (none: no route names it). */
  async of(vmId: string): Promise<string[]> {
    try {
      const owners = [...new Set((await routeOwnersOfVm(this.database, vmId)).map((r) => r.owner))];
      this.trim();
      if (owners.length) this.known.set(vmId, owners);
      else this.known.delete(vmId);
      return owners;
    } catch (err) {
      const known = this.known.get(vmId);
      if (known) return known;
      if (!this.perUser) return [];
      throw err;
    }
  }

  /** What a full read (the VM sync's) said about every owner's VMs. */
  remember(owners: readonly { owner: string; vmIds: readonly string[] }[]): void {
    this.trim();
    const byVm = new Map<string, string[]>();
    for (const o of owners) for (const vm of o.vmIds) byVm.set(vm, [...(byVm.get(vm) ?? []), o.owner]);
    for (const [vm, list] of byVm) this.known.set(vm, list);
  }

  private trim(): void {
    if (this.known.size >= MAX_REMEMBERED_VMS) this.known.clear();
  }
}
