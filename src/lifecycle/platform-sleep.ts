/**
 * The snapshot or stop itself, as Hatch needs it asked: never cut short (Hatch runs the snapshot on
 * the request, so a caller that gives up leaves the VM paused and still `running`), and an answer
 * that is lost is followed by reading the VM again. A VM left `running` that no longer answers
 * (paused by that lost snapshot) is asked once more, which completes the snapshot.
 */
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { PlatformUnavailableError, SleepError, type SleepAction, type Vm, type VmDirectory, type VmPlatform } from "../vms/platform.ts";
import { probeOnce } from "./ready.ts";

export interface PlatformSleepDeps {
  config: Config;
  platform: VmPlatform;
  directory: VmDirectory;
  log: Logger;
}

/** How long a port gets to accept a connection before the VM counts as not answering. */
const ANSWER_PROBE_MS = 1000;

/** Puts the VM to sleep on the platform; resolves with it asleep, or throws SleepError / PlatformUnavailableError. */
export async function sleepOnPlatform(deps: PlatformSleepDeps, vmId: string, action: SleepAction, ports: readonly number[]): Promise<Vm> {
  const ask = () => deps.platform.sleep(vmId, action, { timeoutMs: deps.config.platformSleepTimeoutMs });
  try {
    return await ask();
  } catch (err) {
    const lost = err instanceof PlatformUnavailableError || (err instanceof SleepError && err.reason === "timeout");
    if (!lost) throw err;
    // The answer is lost, not the sleep: what is the VM now?
    const now = await deps.directory.refreshOne(vmId).catch(() => undefined);
    if (now && now.state !== "running") return now;
    if (!now || (await answers(now, ports))) throw err;
    deps.log.warn("vm left running but not answering after a snapshot whose answer was lost; asking once more", { vm: vmId, action });
    return ask();
  }
}

/** True when one of the VM's routed ports accepts a connection. */
async function answers(vm: Vm, ports: readonly number[]): Promise<boolean> {
  if (!vm.guest_ip) return true;
  for (const port of ports) if (await probeOnce(vm.guest_ip, port, ANSWER_PROBE_MS)) return true;
  return ports.length === 0;
}
