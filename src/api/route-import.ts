/**
 * Routes brought over from a Hatch installation (its `proxy_routes` rows), with this project's
 * rules: what may come in, what is already here, and the report of what happened. Used by
 * `hatch-proxy import-hatch` on the database directly, and by the route API's
 * `POST /admin/import-hatch` when a running instance holds the embedded database.
 */
import { sql } from "drizzle-orm";
import type { Database } from "../db/client.ts";
import { queryRows } from "../db/client.ts";
import { RESERVED_SUBDOMAINS, SUBDOMAIN_RE, TEXT } from "./routes.schemas.ts";
import { ID_RE } from "./vm-access.ts";

/** One row of Hatch's `proxy_routes` (plus the VM's owner when Hatch records one). */
export interface HatchRoute {
  id: string;
  vmId: string;
  subdomain: string;
  targetPort: number;
  autoWake: boolean;
  createdAt: Date;
  updatedAt: Date;
  owner: string;
}

export type ImportOutcome =
  | { kind: "imported" }
  | { kind: "present" }
  | { kind: "invalid"; why: string }
  | { kind: "conflict"; why: string };

export interface ImportReport {
  rows: { route: HatchRoute; outcome: ImportOutcome }[];
  imported: number;
  present: number;
  refused: number;
  dryRun: boolean;
}

/** Why a Hatch row cannot become a route here, or undefined when it can. */
export function invalidReason(r: HatchRoute): string | undefined {
  if (!ID_RE.test(r.id)) return `route id ${JSON.stringify(r.id)} is not a valid id`;
  if (!ID_RE.test(r.vmId)) return `vm id ${JSON.stringify(r.vmId)} is not a valid id`;
  if (!SUBDOMAIN_RE.test(r.subdomain)) return TEXT.subdomain;
  if (RESERVED_SUBDOMAINS.has(r.subdomain)) return TEXT.reserved(r.subdomain);
  if (!Number.isInteger(r.targetPort) || r.targetPort < 1 || r.targetPort > 65535) return TEXT.port;
  return undefined;
}

interface Existing {
  id: string;
  vm_id: string;
  subdomain: string;
  target_port: number;
}

/**
 * Imports `routes` into `d` (nothing is written with `dryRun`). Each row is one INSERT … ON CONFLICT
 * DO NOTHING: the database's unique keys settle a race with routes created meanwhile.
 */
export async function importRoutes(d: Database, routes: readonly HatchRoute[], dryRun: boolean): Promise<ImportReport> {
  const report: ImportReport = { rows: [], imported: 0, present: 0, refused: 0, dryRun };
  const add = (route: HatchRoute, outcome: ImportOutcome) => {
    report.rows.push({ route, outcome });
    if (outcome.kind === "imported") report.imported += 1;
    else if (outcome.kind === "present") report.present += 1;
    else report.refused += 1;
  };
  const seen = new Set<string>();
  for (const r of routes) {
    const invalid = invalidReason(r);
    if (invalid) {
      add(r, { kind: "invalid", why: invalid });
      continue;
    }
    if (seen.has(r.subdomain)) {
      add(r, { kind: "conflict", why: TEXT.taken(r.subdomain) + " (twice in the source)" });
      continue;
    }
    seen.add(r.subdomain);
    const clash = async (): Promise<ImportOutcome | undefined> => {
      const found = await queryRows<Existing>(d, sql`select id, vm_id, subdomain, target_port from routes where id = ${r.id} or subdomain = ${r.subdomain}`);
      const same = found.find((e) => e.id === r.id);
      if (same) {
        if (same.subdomain === r.subdomain && same.vm_id === r.vmId && Number(same.target_port) === r.targetPort) return { kind: "present" };
        return { kind: "conflict", why: `route id ${r.id} is already used here by ${same.subdomain} → ${same.vm_id}:${same.target_port}` };
      }
      const taken = found.find((e) => e.subdomain === r.subdomain);
      if (taken) return { kind: "conflict", why: `${TEXT.taken(r.subdomain)} (by ${taken.id} → ${taken.vm_id})` };
      return undefined;
    };
    const before = await clash();
    if (before) {
      add(r, before);
      continue;
    }
    if (dryRun) {
      add(r, { kind: "imported" });
      continue;
    }
    const inserted = await queryRows<{ id: string }>(
      d,
      sql`insert into routes (id, vm_id, subdomain, target_port, auto_wake, owner, created_at, updated_at)
          values (${r.id}, ${r.vmId}, ${r.subdomain}, ${r.targetPort}, ${r.autoWake}, ${r.owner}, ${r.createdAt.toISOString()}, ${r.updatedAt.toISOString()})
          on conflict do nothing returning id`,
    );
    add(r, inserted.length ? { kind: "imported" } : ((await clash()) ?? { kind: "conflict", why: "refused by the database" }));
  }
  return report;
}

/** The report as `--json` prints it and `POST /admin/import-hatch` answers it. */
export interface ImportReportJson {
  dry_run: boolean;
  imported: number;
  already_here: number;
  not_imported: number;
  routes: { id: string; vm_id: string; subdomain: string; target_port: number; outcome: "imported" | "would_import" | "already_here" | "not_imported"; why?: string }[];
}

/** The report in its JSON form. */
export function reportJson(report: ImportReport): ImportReportJson {
  return {
    dry_run: report.dryRun,
    imported: report.imported,
    already_here: report.present,
    not_imported: report.refused,
    routes: report.rows.map(({ route: r, outcome }) => ({
      id: r.id,
      vm_id: r.vmId,
      subdomain: r.subdomain,
      target_port: r.targetPort,
      outcome: outcome.kind === "imported" ? (report.dryRun ? "would_import" : "imported") : outcome.kind === "present" ? "already_here" : "not_imported",
      ...("why" in outcome && { why: outcome.why }),
    })),
  };
}

/** A Hatch row as `POST /admin/import-hatch` takes it. */
export interface HatchRouteJson {
  id: string;
  vm_id: string;
  subdomain: string;
  target_port: number;
  auto_wake: boolean;
  owner: string;
  created_at: string;
  updated_at: string;
}

export const hatchRouteToJson = (r: HatchRoute): HatchRouteJson => ({
  id: r.id,
  vm_id: r.vmId,
  subdomain: r.subdomain,
  target_port: r.targetPort,
  auto_wake: r.autoWake,
  owner: r.owner,
  created_at: r.createdAt.toISOString(),
  updated_at: r.updatedAt.toISOString(),
});

export const hatchRouteFromJson = (j: HatchRouteJson): HatchRoute => ({
  id: j.id,
  vmId: j.vm_id,
  subdomain: j.subdomain,
  targetPort: j.target_port,
  autoWake: j.auto_wake,
  owner: j.owner,
  createdAt: new Date(j.created_at),
  updatedAt: new Date(j.updated_at),
});
