/** What the simulator shows and takes: its VM, snapshot and metrics objects, its errors, and who a call acts for. */
import { createHash } from "node:crypto";
import type { Vm, VmState } from "../platform.ts";
import type { StoredSnapshot } from "./state-file.ts";

/** A simulated VM as Hatch's API shows it, plus the simulator's counters. */
export interface SimVm extends Vm {
  id: string;
  image_id: string;
  state: VmState;
  vcpu_count: number;
  mem_mib: number;
  /** Absent when the VM was made with enable_network: false (as on Hatch). */
  guest_ip?: string;
  guest_mac?: string;
  ssh_port?: number;
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
  /** false: a VM without a network (no guest_ip, guest_mac or ssh_port), as Hatch makes it. Default true. */
  enable_network?: boolean | undefined;
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

