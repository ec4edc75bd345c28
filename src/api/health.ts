import type { Hono } from "hono";
import { Registry } from "prom-client";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { MIGRATIONS_DIR, queryRows } from "../db/client.ts";
import type { ApiDeps, ApiEnv } from "./app.ts";

/** A named readiness probe: resolves to undefined when fine, or a short reason when not. */
export interface ReadinessCheck {
  name: string;
  check(): Promise<string | undefined>;
}

const withTimeout = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms).unref())]);

/** /healthz (process up), /readyz (database, migrations, platform, extras) and /metrics. Open, no auth. */
export function registerHealthEndpoints(app: Hono<ApiEnv>, deps: ApiDeps, registries: () => Registry[]): void {
  const expectedMigrations = (JSON.parse(readFileSync(join(MIGRATIONS_DIR, "meta/_journal.json"), "utf8")).entries as unknown[]).length;
  const checks: ReadinessCheck[] = [
    {
      name: "database",
      async check() {
        await withTimeout(deps.database.ping(), 2000, "database");
        return undefined;
      },
    },
    {
      name: "migrations",
      async check() {
        const rows = await queryRows<{ n: number }>(deps.database, sql`select count(*)::int as n from drizzle.__drizzle_migrations`);
        const n = Number(rows[0]?.n ?? 0);
        return n >= expectedMigrations ? undefined : `${n} of ${expectedMigrations} migrations applied`;
      },
    },
    {
      name: "vm_platform",
      async check() {
        await withTimeout(deps.platform.list(), 3000, "VM platform");
        return undefined;
      },
    },
    ...(deps.readiness ?? []),
  ];

  app.get("/healthz", (c) => c.json({ status: "ok" }));
  app.get("/readyz", async (c) => {
    const results: Record<string, string> = {};
    await Promise.all(
      checks.map(async (ch) => {
        try {
          results[ch.name] = (await ch.check()) ?? "ok";
        } catch (err) {
          // Driver messages stay in the log; the answer names only what failed.
          deps.log.warn("readiness check failed", { check: ch.name, error: err });
          const msg = (err as Error).message;
          results[ch.name] = msg.includes("did not answer within") ? `failed: ${msg}` : "failed (see the log)";
        }
      }),
    );
    const failed = Object.entries(results).filter(([, r]) => r !== "ok");
    if (failed.length) return c.json({ error: `not ready: ${failed.map(([n]) => n).join(", ")}`, checks: results }, 503);
    return c.json({ status: "ready", checks: results });
  });
  app.get("/metrics", async (c) => {
    const all = registries();
    const merged = all.length === 1 ? all[0]! : Registry.merge(all);
    return c.text(await merged.metrics(), 200, { "Content-Type": merged.contentType });
  });
}
