/** A simulated VM as the core keeps it, and the pure helpers around it: ids, input checks, snapshots, metrics. */
import { randomInt } from "node:crypto";
import type { GuestServers } from "./guest-server.ts";
import { GuestTraffic } from "./guest-server.ts";
import type { StoredVm } from "./state-file.ts";
import { SimulatorError, type CreateVmInput, type SimMetrics, type SimSnapshot, type SimVm } from "./types.ts";

export interface Entry {
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
  /** A snapshot is pausing the VM (bridge network): a second one is refused meanwhile. */
  snapshotting: boolean;
}

export const newEntry = (rec: StoredVm): Entry => ({
  rec,
  servers: undefined,
  closing: undefined,
  pending: undefined,
  failWakes: 0,
  generation: 0,
  traffic: new GuestTraffic(),
  bootedAt: undefined,
  snapshotting: false,
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

export const now = () => new Date().toISOString();

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
  if (input.enable_network !== undefined && typeof input.enable_network !== "boolean") throw new SimulatorError(400, "enable_network must be true or false");
  if (input.id !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(input.id)) {
    throw new SimulatorError(400, "id must be 1 to 64 letters, digits, hyphens or underscores");
  }
}

/** Appends a new snapshot to the VM's list (bounded to MAX_SNAPSHOTS) and returns it. */
export function recordSnapshot(rec: StoredVm): SimSnapshot {
  const snap = { id: randomId("snap_"), vm_id: rec.id, created_at: rec.updated_at };
  rec.snapshots.push(snap);
  if (rec.snapshots.length > MAX_SNAPSHOTS) rec.snapshots.splice(0, rec.snapshots.length - MAX_SNAPSHOTS);
  return snap;
}

export function metricsOf(e: Entry): SimMetrics {
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


/** The record of a new VM (state `starting` until its servers are up); `ip` undefined: made without a network, so no address, MAC or SSH port, as on Hatch. */
export function newRecord(id: string, ip: string | undefined, input: CreateVmInput, owner: string | null): StoredVm {
  const stamp = now();
  const octets = ip?.split(".").map(Number);
  const network = octets
    ? {
        guest_ip: ip,
        guest_mac: "06:00:" + octets.map((o) => o.toString(16).padStart(2, "0")).join(":"),
        ssh_port: 20_000 + (octets[2]! % 100) * 256 + octets[3]!,
      }
    : {};
  return {
    id,
    image_id: "sim",
    state: "starting",
    vcpu_count: 1,
    mem_mib: 256,
    ...network,
    enable_network: ip !== undefined,
    created_at: stamp,
    updated_at: stamp,
    guest_ports: [...(input.guest_ports ?? DEFAULT_GUEST_PORTS)],
    restore_ms_override: input.restore_ms ?? null,
    wake_count: 0,
    boot_count: 0,
    owner,
    prev_state: null,
    snapshots: [],
  };
}
