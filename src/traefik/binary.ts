/** Where `npm start` finds a Traefik to run in front. */
import { accessSync, constants } from "node:fs";
import { homedir } from "node:os";
import { delimiter, join } from "node:path";
import type { Config } from "../config.ts";

/** The Traefik version scripts/traefik.sh builds into its cache. */
export const TRAEFIK_VERSION = "v3.6.12";

/** Finds a Traefik binary: TRAEFIK_BIN, then PATH, then the cache scripts/traefik.sh builds into. */
export function findTraefikBinary(config: Config, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const executable = (p: string) => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (config.traefikBin) return executable(config.traefikBin) ? config.traefikBin : undefined;
  for (const dir of (env.PATH ?? "").split(delimiter)) if (dir && executable(join(dir, "traefik"))) return join(dir, "traefik");
  const cacheRoot = env.HATCH_CACHE_DIR ?? join(env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "hatch-proxy");
  const cached = join(cacheRoot, "traefik", TRAEFIK_VERSION, "traefik");
  return executable(cached) ? cached : undefined;
}
