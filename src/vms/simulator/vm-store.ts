/**
 * The simulator's VMs: who may see which (a caller's user or key tag), their public shape, and
 * their persistence (the state file rewritten on every change, and read back at start).
 */
import type { Logger } from "../../log.ts";
import type { VmState } from "../platform.ts";
import { readStateFile, writeStateFile, type StoredVm } from "./state-file.ts";
import { SimulatorError, type SimVm } from "./types.ts";
import { now, type Entry } from "./vm-entry.ts";

export interface VmStoreOptions {
  restoreMs: number;
  stateFile: string | undefined;
  log: Logger;
  /** Called after every state change. */
  onChange?: (() => void) | undefined;
}

export class VmStore {
  readonly entries = new Map<string, Entry>();
  /** Set once the simulator closes: nothing is saved or announced any more. */
  closed = false;

  constructor(private readonly opts: VmStoreOptions) {}

  /** The VM as Hatch's API shows it (the stored record without the simulator's own fields). */
  toJson(e: Entry): SimVm {
    const { restore_ms_override, owner: _owner, prev_state: _prev, snapshots: _snaps, ...pub } = e.rec;
    return { ...pub, guest_ports: [...pub.guest_ports], restore_ms: restore_ms_override ?? this.opts.restoreMs };
  }

  /** Announces a change and rewrites the state file (a failed write is logged, not thrown). */
  save(): void {
    if (this.closed) return;
    this.opts.onChange?.();
    if (!this.opts.stateFile) return;
    try {
      writeStateFile(this.opts.stateFile, [...this.entries.values()].map((e) => e.rec));
    } catch (err) {
      this.opts.log.error("simulator state not saved", { err });
    }
  }

  visible(e: Entry, caller: string | undefined): boolean {
    return caller === undefined || e.rec.owner === null || e.rec.owner === caller;
  }

  /** The VM `caller` may see, or Hatch's 404. */
  find(id: string, caller: string | undefined): Entry {
    const e = this.entries.get(id);
    if (!e || !this.visible(e, caller)) throw new SimulatorError(404, "not found");
    return e;
  }

  touch(e: Entry, state: VmState): void {
    e.rec.state = state;
    e.rec.updated_at = now();
  }

  /** The saved VMs (none without a state file). */
  readSaved(): StoredVm[] {
    return this.opts.stateFile ? readStateFile(this.opts.stateFile) : [];
  }
}
