/**
 * A simulated snapshot, with Hatch's limit and, on the bridge network, Hatch's order: the VM stays
 * `running` while it is paused (a black hole) for the snapshot time, then its link goes, and only
 * then is it `snapshotted`. As on Hatch, the work runs on the request: a caller that leaves while
 * the VM is paused leaves it paused and `running`, with no snapshot (nothing resumes it).
 */
import type { Logger } from "../../log.ts";
import type { GuestNetwork } from "./guest-network.ts";
import { SimulatorError, type SimSnapshot, type SimVm } from "./types.ts";
import { recordSnapshot, type Entry } from "./vm-entry.ts";
import type { VmStore } from "./vm-store.ts";

export interface SnapshotOptions {
  /** How long a bridge VM stays paused while "its memory is uploaded" (HATCH_SIM_SNAPSHOT_MS). */
  snapshotMs: number;
  /** Snapshots per VM before Hatch's 403 (HATCH_SIM_SNAPSHOT_LIMIT; 0 = none). */
  snapshotLimit: number;
  log: Logger;
}

/** Hatch's text for a state conflict: a 500 with Go's message. */
export const conflict = (text: string) => new SimulatorError(500, text);

export class SimSnapshots {
  constructor(
    private readonly store: VmStore,
    private readonly net: GuestNetwork,
    private readonly opts: SnapshotOptions,
  ) {}

  /** Snapshots the VM `caller` may see; `signal`: the request's, aborted when its client leaves. */
  async take(id: string, caller: string | undefined, signal?: AbortSignal): Promise<{ vm: SimVm; snapshot: SimSnapshot }> {
    const { store, net } = this;
    const e = store.find(id, caller);
    if (e.rec.state !== "running") throw conflict(`vm must be running to snapshot (current state: ${e.rec.state})`);
    if (e.snapshotting) throw conflict("snapshot already in progress");
    const limit = this.opts.snapshotLimit;
    if (limit > 0 && e.rec.snapshots.length >= limit) throw new SimulatorError(403, `snapshot limit reached (${e.rec.snapshots.length}/${limit})`);
    if (net.kind === "bridge" && e.rec.guest_ip) await this.pauseFor(e, signal);
    await net.close(e);
    store.touch(e, "snapshotted");
    const snapshot = { ...recordSnapshot(e.rec) };
    store.save();
    return { vm: store.toJson(e), snapshot };
  }

  /** Pauses the VM for the snapshot time; a caller leaving meanwhile leaves it paused (Hatch's bug, kept). */
  private async pauseFor(e: Entry, signal: AbortSignal | undefined): Promise<void> {
    e.snapshotting = true;
    try {
      await this.net.pause(e);
      const finished = await pauseTime(this.opts.snapshotMs, signal);
      if (!finished) {
        this.opts.log.warn("simulated snapshot cancelled by its caller: the vm is left paused and running, as on Hatch", { vm_id: e.rec.id });
        throw conflict("context canceled");
      }
    } finally {
      e.snapshotting = false;
    }
  }
}

/** Waits `ms`; false when `signal` aborts first. */
function pauseTime(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
