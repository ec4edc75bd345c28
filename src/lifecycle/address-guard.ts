/**
 * Refuses requests for a VM whose guest address another running VM claims too (Hatch after a hatchd
 * restart): not one byte may reach the wrong VM, which may be another tenant's. Logged once per
 * conflict, counted per refusal.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { Logger } from "../log.ts";
import { AddressIndex } from "../vms/address-index.ts";
import type { Vm, VmDirectory } from "../vms/platform.ts";
import type { Failure } from "./failure.ts";

export class AddressGuard {
  private readonly index: AddressIndex;
  private readonly refused: { inc(): void };
  private readonly told = new Set<string>();

  constructor(
    directory: Pick<VmDirectory, "all" | "version">,
    private readonly log: Logger,
    registry: Registry | undefined,
  ) {
    const index = (this.index = new AddressIndex(directory));
    if (!registry) {
      this.refused = { inc() {} };
      return;
    }
    this.refused =
      (registry.getSingleMetric("hatch_guest_address_conflict_refusals_total") as Counter | undefined) ??
      new Counter({ name: "hatch_guest_address_conflict_refusals_total", help: "Requests refused because another running VM claims their VM's guest address.", registers: [registry] });
    if (!registry.getSingleMetric("hatch_guest_address_conflicts")) {
      new Gauge({
        name: "hatch_guest_address_conflicts",
        help: "Guest addresses that more than one running VM claims now (their VMs get no direct router and no request).",
        registers: [registry],
        collect() {
          this.set(index.conflicts().size);
        },
      });
    }
  }

  /** The 503 for `vm` when another running VM claims its address, else undefined. */
  check(vm: Vm): Failure | undefined {
    const others = this.index.othersOf(vm);
    if (!others.length) return undefined;
    this.refused.inc();
    const key = [vm.guest_ip, vm.id, ...others].sort().join(" ");
    if (!this.told.has(key)) {
      if (this.told.size > 10_000) this.told.clear();
      this.told.add(key);
      this.log.error("guest address conflict: two running vms claim one address; neither gets a request", { ip: vm.guest_ip, vm: vm.id, also: others });
    }
    // Other VMs' ids are not the caller's to know (they may be another tenant's).
    return { status: 503, error: `guest address conflict: another running vm claims this vm's address (${vm.guest_ip})` };
  }
}
