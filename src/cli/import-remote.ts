/**
 * import-hatch beside a running instance on the embedded database: the rows go to its route API
 * (`POST /admin/import-hatch`), found where it records its URL in the data directory, with the key
 * the routes commands would use (HATCH_PROXY_API_KEY, HATCH_API_KEYS, or the generated key file).
 */
import { IMPORT_PATH } from "../api/import-endpoint.ts";
import { hatchRouteToJson, type HatchRoute, type ImportReportJson } from "../api/route-import.ts";
import { recordedApiUrl } from "../running-api.ts";
import { callApi, type ApiTarget } from "./http-client.ts";
import { routeApiTarget } from "./targets.ts";

/** The running instance's route API: the URL it recorded in `dataDir`, else the one the environment names. */
export function runningApiTarget(dataDir: string, env: Record<string, string | undefined>): ApiTarget {
  const url = recordedApiUrl(dataDir);
  return {
    ...routeApiTarget(env, url ? { "api-url": url } : {}),
    startHint: `the process holding ${dataDir} is not answering on its route API: is it hatch-proxy, and still starting or stopping?`,
    // A large import runs row by row in that process.
    timeoutMs: 300_000,
  };
}

/** Sends the rows; resolves with the report the running instance made, or throws CliError. */
export async function importThroughApi(target: ApiTarget, routes: readonly HatchRoute[], dryRun: boolean, doFetch: typeof fetch = fetch): Promise<ImportReportJson> {
  const answer = await callApi(doFetch, target, "POST", IMPORT_PATH, { dry_run: dryRun, routes: routes.map(hatchRouteToJson) });
  return answer.json as ImportReportJson;
}
