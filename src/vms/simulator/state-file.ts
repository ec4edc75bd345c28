/** Persistence of simulated VMs: one JSON file, rewritten atomically on every change. */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import * as v from "valibot";
import { VM_STATES } from "../platform.ts";

const port = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(65535));

/** A snapshot as Hatch's API shows it. */
export const StoredSnapshotSchema = v.object({ id: v.string(), vm_id: v.string(), created_at: v.string() });
export type StoredSnapshot = v.InferOutput<typeof StoredSnapshotSchema>;

/** One VM as stored: its public fields plus what the simulator keeps private. */
export const StoredVmSchema = v.object({
  id: v.string(),
  image_id: v.string(),
  state: v.picklist(VM_STATES),
  vcpu_count: v.number(),
  mem_mib: v.number(),
  /** Absent for a VM made with enable_network: false, as on Hatch. */
  guest_ip: v.optional(v.string()),
  guest_mac: v.optional(v.string()),
  ssh_port: v.optional(v.number()),
  enable_network: v.boolean(),
  created_at: v.string(),
  updated_at: v.string(),
  guest_ports: v.array(port),
  /** null: follows the simulator's default restore time. */
  restore_ms_override: v.nullable(v.pipe(v.number(), v.integer(), v.minValue(0))),
  wake_count: v.pipe(v.number(), v.integer(), v.minValue(0)),
  boot_count: v.pipe(v.number(), v.integer(), v.minValue(0)),
  owner: v.nullable(v.string()),
  /** The state a restore/start began from, so a crash mid-wake reloads as asleep. */
  prev_state: v.nullable(v.picklist(VM_STATES)),
  /** Oldest first; absent in files written before snapshots were listed. */
  snapshots: v.optional(v.array(StoredSnapshotSchema), () => []),
});
export type StoredVm = v.InferOutput<typeof StoredVmSchema>;

const FileSchema = v.object({ version: v.literal(1), vms: v.array(StoredVmSchema) });

/** The VMs in `path`; [] when the file does not exist. Throws on a corrupt file (never silently drops VMs). */
export function readStateFile(path: string): StoredVm[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const parsed = v.safeParse(FileSchema, JSON.parse(text));
  if (!parsed.success) throw new Error(`simulator state file ${path} is not valid: ${parsed.issues[0].message}`);
  return parsed.output.vms;
}

/** Replaces the file with `vms`; a crash mid-write leaves the previous version intact. */
export function writeStateFile(path: string, vms: readonly StoredVm[]): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ version: 1, vms }, null, 2) + "\n");
  renameSync(tmp, path);
}
