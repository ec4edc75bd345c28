/**
 * Which running VMs claim one guest address. After a hatchd restart Hatch can give a new VM the
 * address a snapshotted VM keeps; once both run, a request for either could reach the other, and
 * another tenant's. Such VMs get no direct router, and the sidecar refuses their requests. Only
 * the VMs hatch-proxy follows are compared (those with routes, and those HATCH_API_KEY sees).
 */
import type { Vm, VmDirectory } from "./platform.ts";

const LIVE = new Set(["running", "starting"]);

export class AddressIndex {
  private version = -1;
  private byIp = new Map<string, string[]>();

  constructor(private readonly directory: Pick<VmDirectory, "all" | "version">) {}

  /** The other running VMs that claim `vm`'s address (none when it has it alone, or none at all). */
  othersOf(vm: Vm): string[] {
    if (!vm.guest_ip) return [];
    return (this.index().get(vm.guest_ip) ?? []).filter((id) => id !== vm.id);
  }

  /** Addresses claimed by more than one running VM, with the VMs. */
  conflicts(): Map<string, string[]> {
    return new Map([...this.index()].filter(([, ids]) => ids.length > 1));
  }

  private index(): Map<string, string[]> {
    if (this.version === this.directory.version) return this.byIp;
    const byIp = new Map<string, string[]>();
    for (const [id, vm] of this.directory.all()) {
      if (!vm.guest_ip || !LIVE.has(vm.state)) continue;
      const ids = byIp.get(vm.guest_ip);
      if (ids) ids.push(id);
      else byIp.set(vm.guest_ip, [id]);
    }
    this.byIp = byIp;
    this.version = this.directory.version;
    return byIp;
  }
}
