/**
 * The simulator's state machine: Hatch's VM states and transition rules (with Hatch's error texts),
 * guest servers opened and closed with the state, optional persistence. The REST API and the
 * in-process VmPlatform are thin shells over this.
 */
import { createHash, randomInt } from "node:crypto";
import type { Logger } from "../../log.ts";
import type { Vm, VmState } from "../platform.ts";
import { GuestTraffic, openGuestServers, type GuestServers } from "./guest-server.ts";
import { createIpPool } from "./ip-pool.ts";
import { readStateFile, writeStateFile, type StoredSnapshot, type StoredVm } from "./state-file.ts";

/** A simulated VM as Hatch's API shows it, plus the simulator's counters. */
export interface SimVm extends Vm {
  id: string;
  image_id: string;
  state: VmState;
  vcpu_count: number;
  mem_mib: number;
  guest_ip: string;
  guest_mac: string;
  ssh_port: number;
  enable_network: boolean;
  created_at: string;
  updated_at: string;
  guest_ports: number[];
  restore_ms: number;
  /** Restores and starts that succeeded. */
  wake_count: number;
  /** Times the guest servers opened (create, each wake, each reload of a running VM). */
  boot_count: number;
}

/** A snapshot as Hatch's API shows it (`POST /vms/{id}/snapshot`, `GET /vms/{id}/snapshots`). */
export type SimSnapshot = StoredSnapshot;

/**
 * Hatch's `GET /vms/{id}/metrics` shape. The simulator has no hypervisor to ask: `net` bytes are the
 * bytes the guest servers' sockets read and wrote since the VM was created (HTTP and WebSocket
 * traffic, without TCP/IP overhead), and what it cannot observe (packets, block I/O, CPU) is
 * reported as 0 rather than invented.
 */
export interface SimMetrics {
  vm_id: string;
  state: VmState;
  vcpu_count: number;
  mem_mib: number;
  /** Seconds since the guest servers last opened while the VM is running; 0 in any other state. */
  uptime_seconds: number;
  net: { rx_bytes: number; tx_bytes: number; rx_packets: number; tx_packets: number };
  block: { read_bytes: number; write_bytes: number };
  vcpu: { cpu_time_micros: number; utilization_percent: number };
  raw: Record<string, never>;
}

export interface CreateVmInput {
  guest_ports?: number[] | undefined;
  restore_ms?: number | undefined;
  id?: string | undefined;
  /** Owner tag as stored (the sha256 hex of the owner's API key; see ownerOfKey). */
  owner?: string | undefined;
  /** Convenience: the owner's API key, stored as ownerOfKey(ownerKey). */
  ownerKey?: string | undefined;
}

/** An answer the simulator gives with an HTTP status (Hatch's texts). */
export class SimulatorError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "SimulatorError";
  }
}

/** The owner tag of an API key: VMs created with this key are visible only to it. */
export function ownerOfKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

/**
 * Who a call acts for. With `users` (HATCH_SIM_USERS: key → user), as on Hatch: every call needs a
 * key (401 without one, or with an unknown one) and VMs belong to users. Without: the owner tag of
 * the key, or undefined (a call without a key sees every VM).
 */
export function callerOfKey(users: ReadonlyMap<string, string> | undefined, key: string | undefined): string | undefined {
  if (!users) return key === undefined ? undefined : ownerOfKey(key);
  if (key === undefined || key === "") throw new SimulatorError(401, "missing api key");
  const user = users.get(key);
  if (user === undefined) throw new SimulatorError(401, "invalid api key");
  return user;
}

/** `caller`: the owner tag (or user) of the requester, or undefined for an unscoped (single-tenant) caller. */
export interface SimulatorCore {
  /** Who a call with `key` acts for (see callerOfKey); throws SimulatorError 401 when users are set and the key is not one. */
  callerOf(key: string | undefined): string | undefined;
  createVm(input?: CreateVmInput, caller?: string): Promise<SimVm>;
  getVm(id: string, caller?: string): SimVm | undefined;
  listVms(caller?: string): SimVm[];
  snapshot(id: string, caller?: string): Promise<SimVm>;
  /** snapshot, also answering the snapshot it recorded (what `POST /vms/{id}/snapshot` returns). */
  takeSnapshot(id: string, caller?: string): Promise<{ vm: SimVm; snapshot: SimSnapshot }>;
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
}

interface Entry {
  rec: StoredVm;
  servers: GuestServers | undefined;
  /** Servers still shutting down; a wake waits for it before binding the same ports. */
  closing: Promise<void> | undefined;
  pending: Promise<SimVm> | undefined;
  failWakes: number;
  /** Bumped by delete, so a wake in flight notices it lost its VM. */
  generation: number;
  /** Outlives the guest servers, so request counts and bytes survive snapshot/restore. */
  traffic: GuestTraffic;
  /** performance.now() when the guest servers last opened; undefined while they are closed. */
  bootedAt: number | undefined;
}

const newEntry = (rec: StoredVm): Entry => ({
  rec,
  servers: undefined,
  closing: undefined,
  pending: undefined,
  failWakes: 0,
  generation: 0,
  traffic: new GuestTraffic(),
  bootedAt: undefined,
});

export const DEFAULT_GUEST_PORTS = [8080];
const MAX_GUEST_PORTS = 16;
const MAX_RESTORE_MS = 600_000;
/** Snapshots listed per VM; older ones are forgotten (a restore only ever uses the latest). */
export const MAX_SNAPSHOTS = 100;
const ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** Random id: prefix + 12 lowercase alphanumerics. */
export function randomId(prefix: string): string {
  let s = prefix;
  for (let i = 0; i < 12; i++) s += ID_ALPHABET[randomInt(ID_ALPHABET.length)];
  return s;
}

const now = () => new Date().toISOString();

/** Validates guest ports and restore time given to createVm (REST input arrives here too). */
export function checkCreateInput(input: CreateVmInput): void {
  const ports = input.guest_ports;
  if (ports !== undefined) {
    const ok =
      Array.isArray(ports) &&
      ports.length >= 1 &&
      ports.length <= MAX_GUEST_PORTS &&
      ports.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535) &&
      new Set(ports).size === ports.length;
    if (!ok) throw new SimulatorError(400, `guest_ports must be 1 to ${MAX_GUEST_PORTS} distinct integers between 1 and 65535`);
  }
  const ms = input.restore_ms;
  if (ms !== undefined && !(Number.isInteger(ms) && ms >= 0 && ms <= MAX_RESTORE_MS)) {
    throw new SimulatorError(400, `restore_ms must be an integer between 0 and ${MAX_RESTORE_MS}`);
  }
  if (input.id !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(input.id)) {
    throw new SimulatorError(400, "id must be 1 to 64 letters, digits, hyphens or underscores");
  }
}

/** Appends a new snapshot to the VM's list (bounded to MAX_SNAPSHOTS) and returns it. */
function recordSnapshot(rec: StoredVm): SimSnapshot {
  const snap = { id: randomId("snap_"), vm_id: rec.id, created_at: rec.updated_at };
  rec.snapshots.push(snap);
  if (rec.snapshots.length > MAX_SNAPSHOTS) rec.snapshots.splice(0, rec.snapshots.length - MAX_SNAPSHOTS);
  return snap;
}

function metricsOf(e: Entry): SimMetrics {
  const { rx, tx } = e.traffic.bytes();
  const up = e.rec.state === "running" && e.bootedAt !== undefined ? (performance.now() - e.bootedAt) / 1000 : 0;
  return {
    vm_id: e.rec.id,
    state: e.rec.state,
    vcpu_count: e.rec.vcpu_count,
    mem_mib: e.rec.mem_mib,
    uptime_seconds: Math.round(up * 1000) / 1000,
    net: { rx_bytes: rx, tx_bytes: tx, rx_packets: 0, tx_packets: 0 },
    block: { read_bytes: 0, write_bytes: 0 },
    vcpu: { cpu_time_micros: 0, utilization_percent: 0 },
    raw: {},
  };
}

/** Builds the state machine and reloads `stateFile` (reopening running VMs' servers). */
export async function createSimulatorCore(opts: CoreOptions): Promise<SimulatorCore> {
  const { log } = opts;
  const pool = createIpPool(opts.ipPrefix);
  const entries = new Map<string, Entry>();
  const sleepers = new Set<() => void>();
  let closed = false;

  const toJson = (e: Entry): SimVm => {
    const { restore_ms_override, owner: _owner, prev_state: _prev, snapshots: _snaps, ...pub } = e.rec;
    return { ...pub, guest_ports: [...pub.guest_ports], restore_ms: restore_ms_override ?? opts.restoreMs };
  };

  const save = () => {
    if (closed) return;
    opts.onChange?.();
    if (!opts.stateFile) return;
    try {
      writeStateFile(opts.stateFile, [...entries.values()].map((e) => e.rec));
    } catch (err) {
      log.error("simulator state not saved", { err });
    }
  };

  const visible = (e: Entry, caller: string | undefined) => caller === undefined || e.rec.owner === null || e.rec.owner === caller;

  const find = (id: string, caller: string | undefined): Entry => {
    const e = entries.get(id);
    if (!e || !visible(e, caller)) throw new SimulatorError(404, "not found");
    return e;
  };

  const touch = (e: Entry, state: VmState) => {
    e.rec.state = state;
    e.rec.updated_at = now();
  };

  // Resolves early (without error) on close; callers check `closed` afterwards.
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      sleepers.add(done);
    });

  const openServers = async (e: Entry) => {
    if (e.closing) await e.closing;
    const boot = e.rec.boot_count + 1;
    e.servers = await openGuestServers({ vmId: e.rec.id, ip: e.rec.guest_ip, boot }, e.rec.guest_ports, e.traffic);
    e.rec.boot_count = boot;
    e.bootedAt = performance.now();
  };

  const closeServers = async (e: Entry) => {
    const servers = e.servers;
    e.servers = undefined;
    e.bootedAt = undefined;
    if (servers) {
      const closing = servers.close();
      e.closing = closing;
      await closing;
      if (e.closing === closing) e.closing = undefined;
    } else if (e.closing) {
      await e.closing;
    }
  };

  const beginWake = (e: Entry, kind: "restore" | "start"): Promise<SimVm> => {
    const from = e.rec.state;
    e.rec.prev_state = from;
    touch(e, "starting");
    save();
    const generation = e.generation;
    const lost = () => closed || entries.get(e.rec.id) !== e || e.generation !== generation;
    const run = async (): Promise<SimVm> => {
      await sleep(e.rec.restore_ms_override ?? opts.restoreMs);
      if (closed) throw new SimulatorError(503, "simulator is shutting down");
      if (lost()) throw new SimulatorError(404, "not found");
      const fail = (why: string) => {
        e.rec.prev_state = null;
        touch(e, from);
        save();
        log.info("simulated wake failed", { vm_id: e.rec.id, kind, why });
        return new SimulatorError(500, `${kind} failed: ${why}`);
      };
      if (e.failWakes > 0) {
        e.failWakes -= 1;
        throw fail("injected failure");
      }
      try {
        await openServers(e);
      } catch (err) {
        if (lost()) throw new SimulatorError(404, "not found");
        throw fail(`cannot open guest port on ${e.rec.guest_ip}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      if (lost()) {
        await closeServers(e);
        throw new SimulatorError(404, "not found");
      }
      e.rec.prev_state = null;
      e.rec.wake_count += 1;
      touch(e, "running");
      save();
      log.info("simulated vm woke", { vm_id: e.rec.id, kind, boot: e.rec.boot_count });
      return toJson(e);
    };
    const p = run();
    e.pending = p;
    p.then(
      () => void (e.pending === p && (e.pending = undefined)),
      () => void (e.pending === p && (e.pending = undefined)),
    );
    return p;
  };

  /** Restore (from snapshotted) or start (from stopped), with Hatch's 409 text for any other state. */
  const wakeFrom = (id: string, caller: string | undefined, from: VmState, kind: "restore" | "start"): Promise<SimVm> => {
    try {
      const e = find(id, caller);
      if (e.rec.state !== from) throw new SimulatorError(409, `vm must be ${from} to ${kind} (current state: ${e.rec.state})`);
      return beginWake(e, kind);
    } catch (err) {
      return Promise.reject(err);
    }
  };

  const takeSnapshot = async (id: string, caller: string | undefined) => {
    const e = find(id, caller);
    if (e.rec.state !== "running") throw new SimulatorError(409, `vm must be running to snapshot (current state: ${e.rec.state})`);
    touch(e, "snapshotted");
    const snapshot = { ...recordSnapshot(e.rec) };
    save();
    await closeServers(e);
    return { vm: toJson(e), snapshot };
  };

  const load = async () => {
    if (!opts.stateFile) return;
    for (const rec of readStateFile(opts.stateFile)) {
      const e = newEntry(rec);
      entries.set(rec.id, e);
      if (!(await pool.claim(rec.guest_ip))) log.warn("simulated vm's guest ip is held by another simulator", { vm_id: rec.id, guest_ip: rec.guest_ip });
      if (rec.state === "starting") {
        // The process stopped mid-wake: the wake never finished.
        rec.state = rec.prev_state ?? "snapshotted";
      } else if (rec.state === "stopping") {
        rec.state = "stopped";
      }
      rec.prev_state = null;
      if (rec.state === "running") {
        try {
          await openServers(e);
        } catch (err) {
          log.warn("simulated vm could not reopen its guest ports; marked stopped", { vm_id: rec.id, err });
          touch(e, "stopped");
        }
      }
    }
    save();
  };

  try {
    await load();
  } catch (err) {
    closed = true;
    await Promise.all([...entries.values()].map(closeServers));
    pool.releaseAll();
    throw err;
  }

  return {
    callerOf: (key) => callerOfKey(opts.users, key),

    async createVm(input = {}, caller) {
      if (closed) throw new SimulatorError(503, "simulator is shutting down");
      checkCreateInput(input);
      if (input.id !== undefined && entries.has(input.id)) throw new SimulatorError(409, `vm "${input.id}" already exists`);
      const ip = await pool.allocate();
      const id = input.id ?? randomId("vm_");
      if (entries.has(id)) {
        pool.release(ip);
        throw new SimulatorError(409, `vm "${id}" already exists`);
      }
      const octets = ip.split(".").map(Number);
      const stamp = now();
      const owner = input.owner ?? (input.ownerKey !== undefined ? callerOfKey(opts.users, input.ownerKey) : caller) ?? null;
      const e = newEntry({
        id,
        image_id: "sim",
        state: "starting",
        vcpu_count: 1,
        mem_mib: 256,
        guest_ip: ip,
        guest_mac: "06:00:" + octets.map((o) => o.toString(16).padStart(2, "0")).join(":"),
        ssh_port: 20_000 + (octets[2]! % 100) * 256 + octets[3]!,
        enable_network: true,
        created_at: stamp,
        updated_at: stamp,
        guest_ports: [...(input.guest_ports ?? DEFAULT_GUEST_PORTS)],
        restore_ms_override: input.restore_ms ?? null,
        wake_count: 0,
        boot_count: 0,
        owner,
        prev_state: null,
        snapshots: [],
      });
      entries.set(id, e);
      try {
        await openServers(e);
      } catch (err) {
        entries.delete(id);
        pool.release(ip);
        throw new SimulatorError(500, `cannot open guest port on ${ip}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      if (closed || entries.get(id) !== e) {
        await closeServers(e);
        throw new SimulatorError(404, "not found");
      }
      touch(e, "running");
      save();
      log.info("simulated vm created", { vm_id: id, guest_ip: ip, guest_ports: e.rec.guest_ports });
      return toJson(e);
    },

    getVm(id, caller) {
      const e = entries.get(id);
      return e && visible(e, caller) ? toJson(e) : undefined;
    },

    listVms(caller) {
      return [...entries.values()].filter((e) => visible(e, caller)).map(toJson);
    },

    snapshot: async (id, caller) => (await takeSnapshot(id, caller)).vm,
    takeSnapshot,

    listSnapshots(id, caller) {
      return find(id, caller).rec.snapshots.map((s) => ({ ...s }));
    },

    metrics(id, caller) {
      return metricsOf(find(id, caller));
    },

    requestCounts(id, caller) {
      return find(id, caller).traffic.requestCounts();
    },

    resetRequestCounts(id, caller) {
      find(id, caller).traffic.resetRequestCounts();
    },

    async stop(id, caller) {
      const e = find(id, caller);
      if (e.rec.state !== "running" && e.rec.state !== "snapshotted") {
        throw new SimulatorError(409, `vm must be running or snapshotted to stop (current state: ${e.rec.state})`);
      }
      touch(e, "stopped");
      save();
      await closeServers(e);
      return toJson(e);
    },

    restore: (id, caller) => wakeFrom(id, caller, "snapshotted", "restore"),
    start: (id, caller) => wakeFrom(id, caller, "stopped", "start"),

    async deleteVm(id, caller) {
      const e = find(id, caller);
      entries.delete(id);
      e.generation += 1;
      save();
      await closeServers(e);
      pool.release(e.rec.guest_ip);
      log.info("simulated vm deleted", { vm_id: id });
    },

    failNextRestores(id, n, caller) {
      if (!Number.isInteger(n) || n < 0) throw new SimulatorError(400, "count must be a non-negative integer");
      find(id, caller).failWakes = n;
    },

    pendingWake(id) {
      return entries.get(id)?.pending;
    },

    async close() {
      if (closed) return;
      closed = true;
      for (const wakeUp of [...sleepers]) wakeUp();
      await Promise.all([...entries.values()].map(closeServers));
      pool.releaseAll();
    },
  };
}
