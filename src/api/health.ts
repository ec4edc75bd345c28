import type { Hono } from "hono";
import type { Registry } from "prom-client";
import { formatDuration } from "../config.ts";
import { databaseUnavailable } from "../db/errors.ts";
import { schemaProblem, schemaState } from "../db/migrations.ts";
import { countRoutes } from "../db/routes.repo.ts";
import { metricsFor } from "../process-metrics.ts";
import type { ApiDeps, ApiEnv, ReadinessCheck } from "./deps.ts";


/** How long each readiness check may take before /readyz calls it failed (checks run in parallel). */
export const READINESS_TIMEOUT_MS = 2000;

class CheckTimeout extends Error {}

/** `p`, or a CheckTimeout after `ms` (the check itself is left to finish on its own). */
function bounded<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CheckTimeout()), ms);
  });
  p.catch(() => {});
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

/**
 * /healthz (process up; with a key, Hatch's `{status, vm_count, route_count}` for the caller),
 * /readyz (database, migrations, platform, extras) and /metrics (the process's metrics, then
 * `registries`). Open, no auth needed.
 */
export function registerHealthEndpoints(app: Hono<ApiEnv>, deps: ApiDeps, registries: () => Registry[]): void {
  const timeoutMs = deps.readinessTimeoutMs ?? READINESS_TIMEOUT_MS;
  const checks: ReadinessCheck[] = [
    {
      name: "database",
      async check() {
        await deps.database.ping();
        return undefined;
      },
    },
    {
      name: "migrations",
      async check() {
        return schemaProblem(await schemaState(deps.database));
      },
    },
    {
      name: "vm_platform",
      async check() {
        await deps.platform.list();
        return undefined;
      },
    },
    ...(deps.readiness ?? []),
  ];

  /** The check's verdict in public words: a timeout and a database outage say what happened, other errors only that they failed. */
  async function verdict(ch: ReadinessCheck): Promise<string> {
    try {
      return (await bounded(ch.check(), timeoutMs)) ?? "ok";
    } catch (err) {
      if (err instanceof CheckTimeout) {
        deps.log.warn("readiness check failed", { check: ch.name, error: `no answer within ${timeoutMs} ms` });
        return `failed: no answer within ${formatDuration(timeoutMs)}`;
      }
      const down = databaseUnavailable(err);
      deps.log.warn("readiness check failed", { check: ch.name, cause: down?.cause, error: err });
      // Our own words for the cause (no driver message: this endpoint is open).
      return down ? `failed: database unavailable (${down.cause})` : "failed (see the log)";
    }
  }

  app.get("/healthz", async (c) => {
    const authorization = c.req.header("authorization");
    const apiKey = c.req.header("x-api-key");
    // Open for probes; with a key it also answers as Hatch's does: the caller's VM and route counts.
    if (!authorization && !apiKey) return c.json({ status: "ok" });
    const principal = await deps.auth.authenticate({ authorization, apiKey });
    const [vms, routes] = await Promise.all([
      principal.scoped ? deps.platform.list({ userKey: principal.key }).then((l) => l.length) : Promise.resolve(deps.directory.all().size),
      countRoutes(deps.database, principal.scoped ? principal.userId : undefined),
    ]);
    return c.json({ status: "ok", vm_count: vms, route_count: routes });
  });
  app.get("/readyz", async (c) => {
    const verdicts = await Promise.all(checks.map(verdict));
    const results = Object.fromEntries(checks.map((ch, i) => [ch.name, verdicts[i]!]));
    const failed = Object.entries(results).filter(([, r]) => r !== "ok");
    if (failed.length) return c.json({ error: `not ready: ${failed.map(([n]) => n).join(", ")}`, checks: results }, 503);
    return c.json({ status: "ready", checks: results });
  });
  app.get("/metrics", async (c) => {
    const merged = metricsFor(registries());
    return c.text(await merged.metrics(), 200, { "Content-Type": merged.contentType });
  });
}
