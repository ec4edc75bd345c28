/**
 * `hatch-proxy traefik-config [--yaml]`: builds the dynamic configuration once from the database
 * and the VM platform and prints it (e.g. for Traefik's file provider). Any failed read aborts:
 * a partial file would make Traefik drop routes.
 */
import { addrToUrl, type Config } from "../config.ts";
import { openConfiguredDatabase, type Database } from "../db/client.ts";
import { listAllRoutes } from "../db/routes.repo.ts";
import { createHatchClient } from "../vms/hatch-client.ts";
import type { VmPlatform } from "../vms/platform.ts";
import { buildDynamicConfig, stableStringify } from "./config-builder.ts";
import { makeSnapshot, traefikSettings } from "./config-snapshot.ts";

export interface PrintDeps {
  database?: Database;
  /** Where VM states come from; default: GET /vms of HATCH_API_URL (or the simulator's API). */
  platform?: Pick<VmPlatform, "list">;
  write?: (text: string) => void;
}

/**
 * The body a running API serves at /traefik/config, or undefined when no API answers there.
 * Embedded PGlite can be opened by one process only, so while `npm start` runs the CLI must not
 * open the data directory itself.
 */
async function fromRunningApi(config: Config): Promise<string | undefined> {
  const headers: Record<string, string> = {};
  if (config.traefikToken) headers.authorization = `Bearer ${config.traefikToken}`;
  let res: Response;
  try {
    res = await fetch(`${config.routeApiUrl}/traefik/config`, { headers, signal: AbortSignal.timeout(config.platformTimeoutMs) });
  } catch {
    return undefined;
  }
  const text = await res.text();
  if (res.status !== 200) throw new Error(`the running API at ${config.routeApiUrl} answered ${res.status}: ${text.slice(0, 200)}`);
  return text;
}

/** Prints the Traefik dynamic configuration (JSON or YAML) built from the current routes and VM states. */
export async function printTraefikConfig(config: Config, format: "json" | "yaml", deps: PrintDeps = {}): Promise<void> {
  const write = deps.write ?? ((t: string) => process.stdout.write(t));
  if (!deps.database && !config.databaseUrl) {
    const served = await fromRunningApi(config);
    if (served !== undefined) {
      // The served body is already the canonical JSON.
      const snap = makeSnapshot(served, 0, 0);
      write(format === "json" ? `${snap.json}\n` : snap.yaml);
      return;
    }
  }
  const database = deps.database ?? (await openConfiguredDatabase(config));
  try {
    const [routes, vms] = await Promise.all([
      listAllRoutes(database),
      // Hatch's API, or the simulator's on HATCH_SIM_ADDR, through the one Hatch client.
      (deps.platform ?? createHatchClient({ baseUrl: config.hatchApiUrl ?? addrToUrl(config.simAddr), apiKey: config.hatchApiKey, timeoutMs: config.platformTimeoutMs })).list(),
    ]);
    const doc = buildDynamicConfig(routes, new Map(vms.map((v) => [v.id, v])), traefikSettings(config));
    const snap = makeSnapshot(stableStringify(doc), 0, 0);
    write(format === "json" ? `${snap.json}\n` : snap.yaml);
  } finally {
    if (!deps.database) await database.close();
  }
}
