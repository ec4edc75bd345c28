/**
 * `hatch-proxy traefik-config [--yaml]`: builds the dynamic configuration once from the database
 * and the VM platform and prints it (e.g. for Traefik's file provider). Any failed read aborts:
 * a partial file would make Traefik drop routes.
 */
import { addrToUrl, type Config } from "../config.ts";
import { openConfiguredDatabase, type Database } from "../db/client.ts";
import { listAllRoutes } from "../db/routes.repo.ts";
import type { Vm, VmPlatform } from "../vms/platform.ts";
import { buildDynamicConfig, stableStringify } from "./config-builder.ts";
import { makeSnapshot, traefikSettings } from "./config-service.ts";

export interface PrintDeps {
  database?: Database;
  /** Where VM states come from; default: GET /vms of HATCH_API_URL (or the simulator's API). */
  platform?: Pick<VmPlatform, "list">;
  write?: (text: string) => void;
}

/** Lists VMs from a Hatch-compatible API (the real one, or the simulator's on HATCH_SIM_ADDR). */
async function listVmsOverHttp(config: Config): Promise<Vm[]> {
  const base = config.hatchApiUrl ?? addrToUrl(config.simAddr);
  const headers: Record<string, string> = { accept: "application/json" };
  if (config.hatchApiKey) headers.authorization = `Bearer ${config.hatchApiKey}`;
  const res = await fetch(`${base}/vms`, { headers, signal: AbortSignal.timeout(config.platformTimeoutMs) });
  if (res.status !== 200) throw new Error(`GET ${base}/vms answered ${res.status}`);
  const body = (await res.json()) as unknown;
  if (!Array.isArray(body)) throw new Error(`GET ${base}/vms did not return an array`);
  return body as Vm[];
}

/** Prints the Traefik dynamic configuration (JSON or YAML) built from the current routes and VM states. */
export async function printTraefikConfig(config: Config, format: "json" | "yaml", deps: PrintDeps = {}): Promise<void> {
  const database = deps.database ?? (await openConfiguredDatabase(config));
  try {
    const [routes, vms] = await Promise.all([
      listAllRoutes(database),
      deps.platform ? deps.platform.list() : listVmsOverHttp(config),
    ]);
    const doc = buildDynamicConfig(routes, new Map(vms.map((v) => [v.id, v])), traefikSettings(config));
    const snap = makeSnapshot(stableStringify(doc), 0, 0);
    (deps.write ?? ((t) => process.stdout.write(t)))(format === "json" ? `${snap.json}\n` : snap.yaml);
  } finally {
    if (!deps.database) await database.close();
  }
}
