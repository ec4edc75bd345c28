/**
 * VMs the platform will not put to sleep for now: Hatch keeps at most 10 snapshots per VM and
 * deletes none, so the 11th snapshot is refused (403 `snapshot limit reached (10/10)`) and every
 * later one would be too. The sweeper leaves such a VM alone until its state or `updated_at`
 * changes (it was woken, stopped, restored by someone); a sleep asked for through the API still
 * tries, and clears the block when it works. Kept in this process (the sweeper's and the API's).
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { Logger } from "../log.ts";
import type { Vm } from "../vms/platform.ts";

interface Block {
  why: string;
  state: string;
  updatedAt: unknown;
}

export class SleepBlocks {
  private readonly blocks = new Map<string, Block>();
  private readonly blocked: Counter;

  constructor(
    registry: Registry,
    private readonly log: Logger,
  ) {
    this.blocked = new Counter({ name: "hatch_sleep_blocked_total", help: "Sleeps the VM platform refused for good (a VM at its snapshot limit); the sweeper stops trying that VM.", registers: [registry] });
    const blocks = this.blocks;
    new Gauge({
      name: "hatch_vms_sleep_blocked",
      help: "VMs the idle sweeper leaves awake because the VM platform refuses to put them to sleep (snapshot limit).",
      registers: [registry],
      collect() {
        this.set(blocks.size);
      },
    });
  }

  /** The platform refused to put `vm` to sleep for `why`; said once per block. */
  block(vm: Vm, why: string): void {
    const had = this.blocks.get(vm.id);
    this.blocks.set(vm.id, { why, state: vm.state, updatedAt: vm.updated_at });
    if (had?.why === why) return;
    this.blocked.inc();
    this.log.warn("vm sleep blocked: the idle sweeper stops trying until the vm's state changes", { vm: vm.id, why });
  }

  /** Why `vmId` cannot be put to sleep now, or undefined; a block ends when the VM (as last known) changed since. */
  reason(vmId: string, now: Vm | undefined): string | undefined {
    const b = this.blocks.get(vmId);
    if (!b) return undefined;
    if (now && (now.state !== b.state || now.updated_at !== b.updatedAt)) {
      this.blocks.delete(vmId);
      return undefined;
    }
    return b.why;
  }

  /** A sleep of `vmId` went through. */
  clear(vmId: string): void {
    this.blocks.delete(vmId);
  }
}
