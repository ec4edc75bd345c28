/**
 * A Hatch-compatible VM platform whose "VMs" are real HTTP servers on their own loopback
 * addresses: the embedded default platform and the test bed for everything that wakes VMs.
 */
import type { Server } from "node:http";
import { createAdaptorServer } from "@hono/node-server";
import type { Hono } from "hono";
import { listen } from "../../listen.ts";
import { silentLogger, type Logger } from "../../log.ts";
import type { VmPlatform } from "../platform.ts";
import { createSimulatorApi } from "./api.ts";
import { createSimulatorCore, type CoreOptions } from "./core.ts";
import type { CreateVmInput, SimMetrics, SimSnapshot, SimVm } from "./types.ts";
import { createSimulatorPlatform } from "./platform.ts";

export { callerOfKey, ownerOfKey, SimulatorError, type CreateVmInput, type SimMetrics, type SimSnapshot, type SimVm } from "./types.ts";
export { MAX_SNAPSHOTS } from "./vm-entry.ts";
export { GuestTraffic, MAX_COUNTED_RIDS, MAX_RID_LENGTH } from "./guest-server.ts";

export interface SimulatorOptions {
  /** Three loopback octets; VMs get `<prefix>.1`, `<prefix>.2`, … Default "127.0.1". */
  ipPrefix?: string | undefined;
  /** Restore/start time of VMs created without their own `restore_ms`. Default 800. */
  restoreMs?: number | undefined;
  /** JSON file the VMs are saved to on every change and reloaded from; undefined = memory only. */
  stateFile?: string | undefined;
  log?: Logger | undefined;
  /** Called after every state change of any VM. */
  onChange?: (() => void) | undefined;
  /** HATCH_SIM_USERS (API key → user): every call then needs a key, and VMs belong to users, as on Hatch. */
  users?: ReadonlyMap<string, string> | undefined;
  /** Hatch's network and quirks (see CoreOptions). */
  network?: CoreOptions["network"];
  subnet?: string | undefined;
  snapshotMs?: number | undefined;
  snapshotLimit?: number | undefined;
  reuseIps?: boolean | undefined;
  canStart?: boolean | undefined;
}

export interface Simulator {
  /** In-process VmPlatform (kind "simulator"), no HTTP hop; its calls name no key unless they give one. */
  readonly platform: VmPlatform;
  /** The same, with `key` sent on every call that names none (HATCH_API_KEY, as a Hatch client does). */
  platformAs(key: string | undefined): VmPlatform;
  /** The Hatch-compatible REST API. */
  readonly app: Hono;
  createVm(input?: CreateVmInput): Promise<SimVm>;
  getVm(id: string): SimVm | undefined;
  listVms(): SimVm[];
  snapshot(id: string): Promise<SimVm>;
  stop(id: string): Promise<SimVm>;
  restore(id: string): Promise<SimVm>;
  start(id: string): Promise<SimVm>;
  deleteVm(id: string): Promise<void>;
  /** The next `n` restores/starts of this VM fail after their delay (state goes back, 500). */
  failNextRestores(id: string, n: number): void;
  /** The VM's snapshots, oldest first. Throws SimulatorError 404 for an unknown VM, as do the calls below. */
  snapshots(id: string): SimSnapshot[];
  /** Hatch's metrics object for the VM (uptime since the last boot while running, else 0). */
  metrics(id: string): SimMetrics;
  /**
   * Requests the VM's guest servers received (any port, WebSocket upgrades included) per `rid`
   * query value, counted when the request head arrived; kept across snapshot/restore, not saved
   * to the state file. At most MAX_COUNTED_RIDS distinct values; new ones beyond are not counted.
   */
  requestCounts(id: string): Record<string, number>;
  /** Forgets the VM's request counts. */
  resetRequestCounts(id: string): void;
  /** Serves `app` on node:http (host default 127.0.0.1; port 0 = any free port). */
  listen(addr: { host?: string | undefined; port: number }): Promise<{ url: string; close(): Promise<void> }>;
  /** Closes every guest server and every API server from `listen`. */
  close(): Promise<void>;
}

export const DEFAULT_SIM_IP_PREFIX = "127.0.1";
export const DEFAULT_SIM_RESTORE_MS = 800;

/** Creates the simulator; with `stateFile`, reloads saved VMs and reopens the running ones. */
export async function createSimulator(opts: SimulatorOptions = {}): Promise<Simulator> {
  const log = opts.log ?? silentLogger;
  const core = await createSimulatorCore({
    ipPrefix: opts.ipPrefix ?? DEFAULT_SIM_IP_PREFIX,
    restoreMs: opts.restoreMs ?? DEFAULT_SIM_RESTORE_MS,
    stateFile: opts.stateFile,
    log,
    onChange: opts.onChange,
    users: opts.users,
    network: opts.network,
    subnet: opts.subnet,
    snapshotMs: opts.snapshotMs,
    snapshotLimit: opts.snapshotLimit,
    reuseIps: opts.reuseIps,
    canStart: opts.canStart,
  });
  const app = createSimulatorApi(core);
  const platform = createSimulatorPlatform(core);
  const listeners = new Set<() => Promise<void>>();

  return {
    platform,
    platformAs: (key) => (key === undefined ? platform : createSimulatorPlatform(core, key)),
    app,
    createVm: (input) => core.createVm(input),
    getVm: (id) => core.getVm(id),
    listVms: () => core.listVms(),
    snapshot: (id) => core.snapshot(id),
    stop: (id) => core.stop(id),
    restore: (id) => core.restore(id),
    start: (id) => core.start(id),
    deleteVm: (id) => core.deleteVm(id),
    failNextRestores: (id, n) => core.failNextRestores(id, n),
    snapshots: (id) => core.listSnapshots(id),
    metrics: (id) => core.metrics(id),
    requestCounts: (id) => core.requestCounts(id),
    resetRequestCounts: (id) => core.resetRequestCounts(id),
    async listen(addr) {
      const served = await listen(createAdaptorServer({ fetch: app.fetch }) as Server, { host: addr.host ?? "127.0.0.1", port: addr.port }, { graceMs: 0 });
      log.debug("vm simulator listening", { url: served.url });
      const close = () => {
        listeners.delete(close);
        return served.close();
      };
      listeners.add(close);
      return { url: served.url, close };
    },
    async close() {
      await Promise.all([...listeners].map((close) => close()));
      await core.close();
    },
  };
}
