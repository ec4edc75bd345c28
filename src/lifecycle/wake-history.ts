/**
 * What this process saw of its VMs' wakes: how long the wake under way has been running and how long
 * this VM's own last wakes took (the waking page), and when each VM last came up (the sleep
 * fallback tells a VM just woken from an app answering 502 itself). Per process and bounded (a few
 * wakes per VM, a cap on VMs).
 */

/** Wakes kept per VM. */
const PER_VM = 5;
/** VMs remembered; the least recently woken is forgotten first. */
const MAX_VMS = 10_000;

export class WakeHistory {
  private readonly running = new Map<string, number>();
  private readonly recent = new Map<string, number[]>();
  private readonly up = new Map<string, number>();

  constructor(
    private readonly perVm = PER_VM,
    private readonly maxVms = MAX_VMS,
  ) {}

  /** A wake of `vmId` started (Date.now() scale). */
  began(vmId: string, at = Date.now()): void {
    this.running.set(vmId, at);
  }

  /**
   * The wake ended; `cameUp` when the VM is up after it (woken here or elsewhere), `durationMs` only
   * for a VM that this wake brought up itself.
   */
  ended(vmId: string, cameUp: boolean, durationMs?: number, at = Date.now()): void {
    this.running.delete(vmId);
    if (cameUp) {
      this.up.delete(vmId);
      this.up.set(vmId, at);
      if (this.up.size > this.maxVms) this.up.delete(this.up.keys().next().value!);
    }
    if (durationMs === undefined) return;
    const list = this.recent.get(vmId) ?? [];
    // Re-inserted: Map order is then least recently woken first.
    this.recent.delete(vmId);
    this.recent.set(vmId, [...list, Math.round(durationMs)].slice(-this.perVm));
    if (this.recent.size > this.maxVms) this.recent.delete(this.recent.keys().next().value!);
  }

  /** When the wake under way in this process began, if one is. */
  startedAt(vmId: string): number | undefined {
    return this.running.get(vmId);
  }

  /** When a wake here last ended with `vmId` up (Date.now() scale), if one did. */
  lastUpAt(vmId: string): number | undefined {
    return this.up.get(vmId);
  }

  /** The VM's last wake durations in ms, oldest first (empty when none was seen here). */
  durations(vmId: string): readonly number[] {
    return this.recent.get(vmId) ?? [];
  }
}

/** The median of `values` (undefined when empty): one slow wake does not make a VM look slow. */
export function median(values: readonly number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : Math.round((sorted[mid - 1]! + sorted[mid]!) / 2);
}
