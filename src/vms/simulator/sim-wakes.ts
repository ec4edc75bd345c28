/**
 * A simulated restore or start: the VM is `starting` for its restore time, then its guest servers
 * open and it is `running` (or, for an injected failure or a port it cannot open, it goes back to
 * where it was, with a 500). A delete or the simulator closing while it waits is noticed.
 */
import type { Logger } from "../../log.ts";
import type { VmState } from "../platform.ts";
import type { GuestNetwork } from "./guest-network.ts";
import { SimulatorError, type SimVm } from "./types.ts";
import type { Entry } from "./vm-entry.ts";
import type { VmStore } from "./vm-store.ts";

export class SimWakes {
  /** Pending restore delays, ended early (without error) when the simulator closes. */
  private readonly sleepers = new Set<() => void>();

  constructor(
    private readonly store: VmStore,
    private readonly net: GuestNetwork,
    private readonly opts: {
      restoreMs: number;
      log: Logger;
      /**
       * Restore as Hatch does: the VM stays `snapshotted` until it is `running`, and nothing stops a
       * second restore meanwhile (it runs too, and its link replaces the first one's).
       */
      hatchRestore?: boolean | undefined;
    },
  ) {}

  /** Restore (from snapshotted) or start (from stopped), with Hatch's 409 text for any other state. */
  from(id: string, caller: string | undefined, from: VmState, kind: "restore" | "start"): Promise<SimVm> {
    try {
      const e = this.store.find(id, caller);
      // Hatch answers a state conflict with a 500 and Go's text.
      if (e.rec.state !== from) throw new SimulatorError(500, `vm must be ${from} to ${kind} (current state: ${e.rec.state})`);
      return this.begin(e, kind);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Starts waking `e`; its promise is kept on the entry so others share it (pendingWake). */
  begin(e: Entry, kind: "restore" | "start"): Promise<SimVm> {
    const { store } = this;
    const from = e.rec.state;
    const hatchOrder = kind === "restore" && this.opts.hatchRestore === true;
    if (!hatchOrder) {
      e.rec.prev_state = from;
      store.touch(e, "starting");
      store.save();
    }
    const generation = e.generation;
    const lost = () => store.closed || store.entries.get(e.rec.id) !== e || e.generation !== generation;
    // What the network can make ahead is made during the restore time, as Hatch recreates the tap then.
    const prepared = (this.net.prepare?.(e) ?? Promise.resolve()).then(
      () => undefined,
      (err: unknown) => err,
    );
    const run = async (): Promise<SimVm> => {
      await this.sleep(e.rec.restore_ms_override ?? this.opts.restoreMs);
      const prepareError = await prepared;
      if (store.closed) throw new SimulatorError(503, "simulator is shutting down");
      if (lost()) throw new SimulatorError(404, "not found");
      const fail = (why: string) => {
        e.rec.prev_state = null;
        store.touch(e, from);
        store.save();
        this.opts.log.info("simulated wake failed", { vm_id: e.rec.id, kind, why });
        return new SimulatorError(500, `${kind} failed: ${why}`);
      };
      if (e.failWakes > 0) {
        e.failWakes -= 1;
        throw fail("injected failure");
      }
      try {
        if (prepareError) throw prepareError;
        await this.net.open(e);
      } catch (err) {
        if (lost()) throw new SimulatorError(404, "not found");
        throw fail(`cannot open guest port on ${e.rec.guest_ip}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      if (lost()) {
        await this.net.close(e);
        throw new SimulatorError(404, "not found");
      }
      e.rec.prev_state = null;
      e.rec.wake_count += 1;
      store.touch(e, "running");
      store.save();
      this.opts.log.info("simulated vm woke", { vm_id: e.rec.id, kind, boot: e.rec.boot_count });
      return store.toJson(e);
    };
    const p = run();
    e.pending = p;
    p.then(
      () => void (e.pending === p && (e.pending = undefined)),
      () => void (e.pending === p && (e.pending = undefined)),
    );
    return p;
  }

  /** Ends every pending restore delay now (the simulator closes). */
  wakeSleepers(): void {
    for (const wakeUp of [...this.sleepers]) wakeUp();
  }

  // Resolves early (without error) on close; callers check `closed` afterwards.
  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.sleepers.add(done);
    });
  }
}
