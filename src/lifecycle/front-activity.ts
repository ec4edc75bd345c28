/**
 * Activity this process can see without being on the request path: Traefik's per-service request
 * counters (a route's direct router served requests), and a VM coming up (woken by anyone: its
 * idle clock starts again). Both become marks in the activity recorder.
 */
import type { Logger } from "../log.ts";
import type { TraefikFronts } from "../traefik/fronts.ts";
import type { VmDirectory } from "../vms/platform.ts";
import type { ActivityRecorder } from "./activity.ts";
import type { SleepWatch } from "./sleep-watch.ts";

export interface FrontActivityDeps {
  fronts: TraefikFronts;
  directory: VmDirectory;
  activity: ActivityRecorder;
  sleeps: SleepWatch;
  /** The VM a Traefik service belongs to (the config service's routes). */
  vmOfService(service: string): string | undefined;
  /** VMs that have routes. */
  routedVms(): string[];
  /** How often Traefik's counters are read. */
  intervalMs: number;
  log: Logger;
}

/** Reads the fronts on a timer and marks VMs active; `warm` once two reads have succeeded. */
export class FrontActivity {
  private timer: NodeJS.Timeout | undefined;
  private reads = 0;
  private readonly states = new Map<string, string>();
  private unsubscribe: (() => void) | undefined;

  constructor(private readonly deps: FrontActivityDeps) {}

  /** True once changes can be told from a baseline (two good reads of every instance, or no instance). */
  get warm(): boolean {
    return !this.deps.fronts.configured || this.reads >= 2;
  }

  start(): void {
    const { directory } = this.deps;
    for (const [id, vm] of directory.all()) this.states.set(id, vm.state);
    this.unsubscribe = directory.onChange(() => this.observeStates());
    if (this.deps.fronts.configured) {
      void this.read();
      this.timer = setInterval(() => void this.read(), this.deps.intervalMs);
      this.timer.unref();
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
  }

  /** One read of every instance: moved counters mark their VMs; an unreadable instance marks all it may route. */
  async read(): Promise<void> {
    const { fronts, activity, directory, sleeps } = this.deps;
    const { changed, failed } = await fronts.scrape();
    for (const service of changed) {
      const vmId = this.deps.vmOfService(service);
      if (vmId) activity.touch(vmId);
    }
    if (failed.length) {
      // What it served is unknown: every VM it may route directly counts as active, never idle.
      for (const vmId of this.deps.routedVms()) {
        if (directory.peek(vmId)?.state === "running" && !sleeps.get(vmId)) activity.touch(vmId);
      }
      this.reads = 0;
    } else this.reads += 1;
  }

  /** A VM that just came up (restored, started, created) is in use from now. */
  private observeStates(): void {
    for (const [id, vm] of this.deps.directory.all()) {
      const before = this.states.get(id);
      if (before !== undefined && before !== "running" && vm.state === "running") this.deps.activity.touch(id);
      this.states.set(id, vm.state);
    }
  }
}
