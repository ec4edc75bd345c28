/**
 * The lifecycle pieces one process shares between its proxies and its API: the activity recorder,
 * the view of sleeps in progress, the VM lifecycle and the proxy metrics.
 */
import type { Config } from "../config.ts";
import type { Database } from "../db/client.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory, VmPlatform } from "../vms/platform.ts";
import { createWakeMetrics, type WakeMetrics } from "./metrics.ts";
import { ActivityRecorder, newHolderId } from "./activity.ts";
import { SleepWatch } from "./sleep-watch.ts";
import { VmLifecycle } from "./vm-lifecycle.ts";

/** How often each process writes the activity it saw, and heartbeats its open connections. */
export const ACTIVITY_FLUSH_MS = 1000;
/**
 * Rows (open connections, sleeps in progress) not refreshed for this long belong to a process that
 * died: readers ignore them. Several flush intervals, so one slow write does not lose a VM's state.
 */
export const STALE_MS = 5000;
/** Full re-read of the sleeps in progress (heals a lost notification, expires dead sleepers' rows). */
export const SLEEP_RELOAD_MS = 2000;

export interface LifecycleRuntime {
  lifecycle: VmLifecycle;
  activity: ActivityRecorder;
  sleeps: SleepWatch;
  metrics: WakeMetrics;
  /** This process's name in vm_connections and vm_sleeps. */
  holder: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface RuntimeDeps {
  config: Config;
  database: Database;
  platform: VmPlatform;
  directory: VmDirectory;
  log: Logger;
}

/** Builds the shared pieces; start() begins following sleeps and writing activity. */
export function createLifecycleRuntime(deps: RuntimeDeps): LifecycleRuntime {
  const holder = newHolderId();
  const metrics = createWakeMetrics();
  const activity = new ActivityRecorder({ database: deps.database, holder, flushMs: ACTIVITY_FLUSH_MS, log: deps.log });
  const sleeps = new SleepWatch({ database: deps.database, directory: deps.directory, staleMs: STALE_MS, reloadMs: SLEEP_RELOAD_MS, log: deps.log });
  const lifecycle = new VmLifecycle({ ...deps, activity, sleeps, metrics });
  // A process learning that one of its VMs is draining reports what it has open to it at once,
  // so the drain waits for those requests (the periodic flush could be a second late).
  sleeps.onChange((vmId) => {
    for (const id of vmId === undefined ? activity.openVms() : [vmId]) {
      if (sleeps.get(id)) activity.watch(id);
      else activity.unwatch(id);
    }
  });
  let started: Promise<void> | undefined;
  return {
    lifecycle,
    activity,
    sleeps,
    metrics,
    holder,
    start() {
      started ??= (async () => {
        await sleeps.start();
        activity.start();
      })();
      return started;
    },
    async stop() {
      lifecycle.close();
      await started?.catch(() => {});
      await sleeps.stop();
      await activity.stop();
    },
  };
}
