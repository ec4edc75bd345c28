/**
 * The simulator's state machine: Hatch's VM states and transition rules (with Hatch's error texts),
 * guest servers opened and closed with the state, optional persistence. The REST API and the
 * in-process VmPlatform are thin shells over this.
 */
import type { Logger } from "../../log.ts";
import { BridgeGuestNetwork, LoopbackNetwork, type GuestNetwork } from "./guest-network.ts";
import { DEFAULT_BRIDGE_SUBNET } from "./network/bridge.ts";
import { conflict, SimSnapshots } from "./sim-snapshots.ts";
import { SimWakes } from "./sim-wakes.ts";
import { callerOfKey, SimulatorError, type CreateVmInput, type SimMetrics, type SimSnapshot, type SimVm } from "./types.ts";
import { checkCreateInput, metricsOf, newEntry, newRecord, randomId } from "./vm-entry.ts";
import { VmStore } from "./vm-store.ts";

/** `caller`: the owner tag (or user) of the requester, or undefined for an unscoped (single-tenant) caller. */
export interface SimulatorCore {
  /** Who a call with `key` acts for (see callerOfKey); throws SimulatorError 401 when users are set and the key is not one. */
  callerOf(key: string | undefined): string | undefined;
  createVm(input?: CreateVmInput, caller?: string): Promise<SimVm>;
  getVm(id: string, caller?: string): SimVm | undefined;
  listVms(caller?: string): SimVm[];
  snapshot(id: string, caller?: string): Promise<SimVm>;
  /**
   * snapshot, also answering the snapshot it recorded (what `POST /vms/{id}/snapshot` returns);
   * `signal`: the request's, whose abort cancels a snapshot under way as on Hatch.
   */
  takeSnapshot(id: string, caller?: string, signal?: AbortSignal): Promise<{ vm: SimVm; snapshot: SimSnapshot }>;
  /** The VM's snapshots, oldest first (the latest MAX_SNAPSHOTS). */
  listSnapshots(id: string, caller?: string): SimSnapshot[];
  metrics(id: string, caller?: string): SimMetrics;
  /** Requests the VM's guest servers received per `rid` query value, across sleeps (see GuestTraffic). */
  requestCounts(id: string, caller?: string): Record<string, number>;
  resetRequestCounts(id: string, caller?: string): void;
  stop(id: string, caller?: string): Promise<SimVm>;
  restore(id: string, caller?: string): Promise<SimVm>;
  start(id: string, caller?: string): Promise<SimVm>;
  deleteVm(id: string, caller?: string): Promise<void>;
  failNextRestores(id: string, n: number, caller?: string): void;
  /** Resolves when the VM's restore/start in flight settles (undefined when none is). */
  pendingWake(id: string): Promise<SimVm> | undefined;
  /** The network the VMs sit on. */
  readonly network: "loopback" | "bridge";
  /** False when the simulator answers as Hatch does, without a start call (HATCH_SIM_START=0). */
  readonly canStart: boolean;
  close(): Promise<void>;
}

export interface CoreOptions {
  ipPrefix: string;
  restoreMs: number;
  stateFile: string | undefined;
  log: Logger;
  /** Called after every state change (an in-process VM directory can follow without polling). */
  onChange?: (() => void) | undefined;
  /** HATCH_SIM_USERS: API key → user. Set: calls need a key and VMs belong to users, as on Hatch. */
  users?: ReadonlyMap<string, string> | undefined;
  /** HATCH_SIM_NETWORK (default loopback) and, for bridge, HATCH_SIM_SUBNET. */
  network?: "loopback" | "bridge" | undefined;
  subnet?: string | undefined;
  /** HATCH_SIM_SNAPSHOT_MS: how long a bridge VM stays paused, still `running`, during a snapshot (default 1500). */
  snapshotMs?: number | undefined;
  /** HATCH_SIM_SNAPSHOT_LIMIT: snapshots per VM before Hatch's 403 (default 10; 0 = none). */
  snapshotLimit?: number | undefined;
  /** HATCH_SIM_REUSE_IPS: a new VM gets the lowest address no running VM holds (bridge only). */
  reuseIps?: boolean | undefined;
  /** HATCH_SIM_START: serve a start call for stopped VMs (Hatch has none). Default true. */
  canStart?: boolean | undefined;
}

export const DEFAULT_SIM_SNAPSHOT_MS = 1500;
export const DEFAULT_SIM_SNAPSHOT_LIMIT = 10;

/** Builds the state machine and reloads `stateFile` (reopening running VMs' servers). */
export async function createSimulatorCore(opts: CoreOptions): Promise<SimulatorCore> {
  const { log } = opts;
  const bridge = opts.network === "bridge";
  if (opts.reuseIps && !bridge) throw new Error("HATCH_SIM_REUSE_IPS needs HATCH_SIM_NETWORK=bridge: two VMs cannot listen on one loopback address");
  const net: GuestNetwork = bridge ? await BridgeGuestNetwork.create(opts.subnet ?? DEFAULT_BRIDGE_SUBNET, log) : new LoopbackNetwork(opts.ipPrefix);
  const store = new VmStore(opts);
  const { entries } = store;
  // On the bridge a restore is Hatch's: no `starting` state and no lock (two concurrent ones both run).
  const wakes = new SimWakes(store, net, { ...opts, hatchRestore: bridge });
  const snapshots = new SimSnapshots(store, net, {
    snapshotMs: opts.snapshotMs ?? DEFAULT_SIM_SNAPSHOT_MS,
    snapshotLimit: opts.snapshotLimit ?? DEFAULT_SIM_SNAPSHOT_LIMIT,
    log,
  });
  const canStart = opts.canStart ?? true;
  const takeSnapshot = (id: string, caller: string | undefined, signal?: AbortSignal) => snapshots.take(id, caller, signal);
  /** The address of a new VM: none without a network; with HATCH_SIM_REUSE_IPS, the lowest no running VM holds. */
  const addressFor = (input: CreateVmInput): Promise<string | undefined> => {
    if (input.enable_network === false) return Promise.resolve(undefined);
    if (!opts.reuseIps) return net.allocate();
    const running = new Set([...entries.values()].flatMap((e) => (e.rec.state === "running" || e.rec.state === "starting") && e.rec.guest_ip ? [e.rec.guest_ip] : []));
    return net.allocate(running);
  };

  const load = async () => {
    for (const rec of store.readSaved()) {
      const e = newEntry(rec);
      entries.set(rec.id, e);
      if (rec.guest_ip && !(await net.claim(rec.guest_ip))) log.warn("simulated vm's guest ip is held by another simulator", { vm_id: rec.id, guest_ip: rec.guest_ip });
      if (rec.state === "starting") {
        // The process stopped mid-wake: the wake never finished.
        rec.state = rec.prev_state ?? "snapshotted";
      } else if (rec.state === "stopping") {
        rec.state = "stopped";
      }
      rec.prev_state = null;
      if (rec.state === "running" && rec.guest_ip) {
        try {
          await net.open(e);
        } catch (err) {
          log.warn("simulated vm could not reopen its guest ports; marked stopped", { vm_id: rec.id, err });
          store.touch(e, "stopped");
        }
      }
    }
    if (opts.stateFile) store.save();
  };

  try {
    await load();
  } catch (err) {
    store.closed = true;
    await Promise.all([...entries.values()].map((e) => net.close(e)));
    await net.shutdown().catch(() => {});
    throw err;
  }

  return {
    callerOf: (key) => callerOfKey(opts.users, key),

    async createVm(input = {}, caller) {
      if (store.closed) throw new SimulatorError(503, "simulator is shutting down");
      checkCreateInput(input);
      if (input.id !== undefined && entries.has(input.id)) throw new SimulatorError(409, `vm "${input.id}" already exists`);
      const ip = await addressFor(input);
      const id = input.id ?? randomId("vm_");
      if (entries.has(id)) {
        if (ip) net.release(ip);
        throw new SimulatorError(409, `vm "${id}" already exists`);
      }
      const owner = input.owner ?? (input.ownerKey !== undefined ? callerOfKey(opts.users, input.ownerKey) : caller) ?? null;
      const e = newEntry(newRecord(id, ip, input, owner));
      entries.set(id, e);
      try {
        // A VM without a network runs with nothing to reach it by.
        if (ip) await net.open(e);
      } catch (err) {
        entries.delete(id);
        net.release(ip!);
        throw new SimulatorError(500, `cannot open guest port on ${ip}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      if (store.closed || entries.get(id) !== e) {
        await net.close(e);
        throw new SimulatorError(404, "not found");
      }
      store.touch(e, "running");
      store.save();
      log.info("simulated vm created", { vm_id: id, guest_ip: ip, guest_ports: e.rec.guest_ports });
      return store.toJson(e);
    },

    getVm(id, caller) {
      const e = entries.get(id);
      return e && store.visible(e, caller) ? store.toJson(e) : undefined;
    },

    listVms(caller) {
      // Newest first, as Hatch lists them.
      return [...entries.values()]
        .filter((e) => store.visible(e, caller))
        .reverse()
        .map((e) => store.toJson(e));
    },

    snapshot: async (id, caller) => (await takeSnapshot(id, caller)).vm,
    takeSnapshot,

    listSnapshots(id, caller) {
      return store.find(id, caller).rec.snapshots.map((s) => ({ ...s }));
    },

    metrics(id, caller) {
      return metricsOf(store.find(id, caller));
    },

    requestCounts(id, caller) {
      return store.find(id, caller).traffic.requestCounts();
    },

    resetRequestCounts(id, caller) {
      store.find(id, caller).traffic.resetRequestCounts();
    },

    async stop(id, caller) {
      const e = store.find(id, caller);
      if (e.rec.state !== "running" && e.rec.state !== "snapshotted") {
        throw conflict(`vm must be running or snapshotted to stop (current state: ${e.rec.state})`);
      }
      store.touch(e, "stopped");
      store.save();
      await net.close(e);
      return store.toJson(e);
    },

    restore: (id, caller) => wakes.from(id, caller, "snapshotted", "restore"),
    start: (id, caller) => (canStart ? wakes.from(id, caller, "stopped", "start") : Promise.reject(new SimulatorError(404, "not found"))),

    async deleteVm(id, caller) {
      const e = store.find(id, caller);
      entries.delete(id);
      e.generation += 1;
      store.save();
      await net.forget(e);
      if (e.rec.guest_ip) net.release(e.rec.guest_ip);
      log.info("simulated vm deleted", { vm_id: id });
    },

    failNextRestores(id, n, caller) {
      if (!Number.isInteger(n) || n < 0) throw new SimulatorError(400, "count must be a non-negative integer");
      store.find(id, caller).failWakes = n;
    },

    pendingWake(id) {
      return entries.get(id)?.pending;
    },

    async close() {
      if (store.closed) return;
      store.closed = true;
      wakes.wakeSleepers();
      await Promise.all([...entries.values()].map((e) => net.close(e)));
      await net.shutdown().catch((err: unknown) => log.warn("simulator network not fully closed", { err }));
    },
    network: net.kind,
    canStart,
  };
}
