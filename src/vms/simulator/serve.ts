/** The simulator as `npm start` and `hatch-proxy sim` run it: state in HATCH_DATA_DIR, API on HATCH_SIM_ADDR. */
import { join } from "node:path";
import type { Config } from "../../config.ts";
import { lockDirectory } from "../../db/data-dir-lock.ts";
import type { Listening } from "../../listen.ts";
import type { Logger } from "../../log.ts";
import { createSimulator, type Simulator } from "./index.ts";

/**
 * The simulator with its state in HATCH_DATA_DIR and its API on HATCH_SIM_ADDR (`npm start` and
 * `hatch-proxy sim`). It rewrites simulator.json as soon as it has loaded it (a VM whose ports
 * another process holds is saved as stopped), so it takes the directory's lock first, unless the
 * caller holds it; close() stops it and then lets the lock go.
 */
export async function serveSimulator(
  config: Config,
  log: Logger,
  opts: { locked?: boolean | undefined; onChange?: () => void } = {},
): Promise<{ simulator: Simulator; api: Listening; close(): Promise<void> }> {
  const releaseDir = opts.locked ? () => {} : lockDirectory(config.dataDir, `the data directory ${config.dataDir}`);
  let simulator: Simulator | undefined;
  try {
    simulator = await createSimulator({
      ipPrefix: config.simIpPrefix,
      restoreMs: config.simRestoreMs,
      stateFile: join(config.dataDir, "simulator.json"),
      users: config.simUsers,
      network: config.simNetwork,
      subnet: config.simSubnet,
      snapshotMs: config.simSnapshotMs,
      snapshotLimit: config.simSnapshotLimit,
      reuseIps: config.simReuseIps,
      canStart: config.simStart,
      log,
      ...(opts.onChange && { onChange: opts.onChange }),
    });
    const served = await simulator.listen({ host: config.simAddr.host ?? "0.0.0.0", port: config.simAddr.port });
    const sim = simulator;
    return {
      simulator: sim,
      api: { url: served.url, port: Number(new URL(served.url).port), close: served.close },
      async close() {
        await served.close();
        await sim.close();
        releaseDir();
      },
    };
  } catch (err) {
    await simulator?.close();
    releaseDir();
    throw err;
  }
}
