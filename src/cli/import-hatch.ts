/**
 * `hatch-proxy import-hatch --from <postgres url> [--dry-run] [--json]`: brings the routes of a Hatch
 * installation (its `proxy_routes` table) into this one, keeping ids and timestamps. Rows that
 * break this project's rules, and subdomains already taken here, are listed and left out; a re-run
 * imports nothing twice. Exit 0 when every row is here afterwards, 1 when some are not, 3 when a
 * database could not be read or written.
 */
import postgres from "postgres";
import { sql } from "drizzle-orm";
import type { Database } from "../db/client.ts";
import { queryRows } from "../db/client.ts";
import { RESERVED_SUBDOMAINS, SUBDOMAIN_RE, TEXT } from "../api/routes.schemas.ts";
import { ID_RE } from "../api/vm-access.ts";

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

/** Reads Hatch's routes from `url`; throws a clear error when it is not Hatch's database. */
export async function readHatchRoutes(url: string): Promise<HatchRoute[]> {
  const src = postgres(url, { max: 1, connect_timeout: 10, onnotice: () => {}, idle_timeout: 5 });
  try {
    const [table] = await src`select to_regclass('proxy_routes') is not null as ok`;
    if (!table?.ok) throw new ImportError("the source database has no proxy_routes table: is it Hatch's database?");
    // Later Hatch versions record an owner per VM: routes then stay scoped to that user here.
    const [col] = await src`select exists (select 1 from information_schema.columns where table_name = 'vms' and column_name = 'user_id') as ok`;
    const owner = col?.ok ? src`coalesce(v.user_id::text, '')` : src`''`;
    const join = col?.ok ? src`left join vms v on v.id = r.vm_id` : src``;
    const rows = await src`
      select r.id::text as id, r.vm_id::text as vm_id, r.subdomain::text as subdomain, r.target_port::int as target_port,
             coalesce(r.auto_wake, true) as auto_wake, r.created_at, r.updated_at, ${owner} as owner
      from proxy_routes r ${join}
      order by r.created_at, r.id`;
    return rows.map((r) => ({
      id: r.id,
      vmId: r.vm_id,
      subdomain: r.subdomain,
      targetPort: Number(r.target_port),
      autoWake: Boolean(r.auto_wake),
      createdAt: new Date(r.created_at),
      updatedAt: new Date(r.updated_at ?? r.created_at),
      owner: r.owner ?? "",
    }));
  } finally {
    await src.end({ timeout: 2 }).catch(() => {});
  }
}

/** A failure to read or write a database (exit 3), in words safe to print. */
export class ImportError extends Error {}

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

/** The report for people: one line per row that needs attention, then the totals. */
export function formatReport(rep: ImportReport): string[] {
  const lines: string[] = [];
  const verb = rep.dryRun ? "would import" : "imported";
  for (const { route: r, outcome } of rep.rows) {
    const what = `${r.id}  ${r.subdomain} → ${r.vmId}:${r.targetPort}`;
    if (outcome.kind === "imported") lines.push(`${verb}  ${what}`);
    else if (outcome.kind === "present") lines.push(`already here  ${what}`);
    else lines.push(`not imported  ${what}: ${outcome.why}`);
  }
  lines.push(
    `${rep.rows.length} route${rep.rows.length === 1 ? "" : "s"} in Hatch: ${rep.imported} ${verb}, ${rep.present} already here, ${rep.refused} not imported${rep.dryRun ? " (dry run: nothing written)" : ""}`,
  );
  return lines;
}

export const IMPORT_USAGE = `Usage: hatch-proxy import-hatch --from <postgres url> [--dry-run] [--json]

Copies the routes of a Hatch installation (its proxy_routes table) into this one's database
(DATABASE_URL, or the embedded one in HATCH_DATA_DIR), keeping ids and timestamps. Rows that break
the route rules, and subdomains already taken here, are listed and left out. Running it again
imports nothing twice.
  --from <url>   Hatch's PostgreSQL (postgres://…); nothing is written there
  --dry-run      say what would happen, write nothing
  --json         the report as JSON on stdout
Exit: 0 every route is here, 1 some were not imported, 2 bad usage, 3 a database failed.`;

/** Runs the command; resolves with the exit code. `open` gives this installation's database. */
export async function runImportHatch(
  argv: readonly string[],
  open: () => Promise<Database>,
  io: { out(s: string): void; err(s: string): void },
): Promise<number> {
  const { parseArgs } = await import("node:util");
  let values: { from?: string; "dry-run"?: boolean; json?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: { from: { type: "string" }, "dry-run": { type: "boolean" }, json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    io.err(`hatch-proxy import-hatch: ${(err as Error).message}\n\n${IMPORT_USAGE}\n`);
    return 2;
  }
  if (values.help) {
    io.out(IMPORT_USAGE + "\n");
    return 0;
  }
  const from = values.from?.trim();
  if (!from || !/^postgres(ql)?:\/\//.test(from)) {
    io.err(`hatch-proxy import-hatch: --from needs Hatch's database as a postgres:// URL\n\n${IMPORT_USAGE}\n`);
    return 2;
  }
  let routes: HatchRoute[];
  try {
    routes = await readHatchRoutes(from);
  } catch (err) {
    io.err(`hatch-proxy import-hatch: cannot read Hatch's routes: ${describe(err, from)}\n`);
    return 3;
  }
  let database: Database | undefined;
  let report: ImportReport;
  try {
    database = await open();
    report = await importRoutes(database, routes, Boolean(values["dry-run"]));
  } catch (err) {
    io.err(`hatch-proxy import-hatch: cannot write the routes here: ${describe(err, from)}\n`);
    return 3;
  } finally {
    await database?.close().catch(() => {});
  }
  if (values.json) {
    io.out(
      JSON.stringify({
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
      }) + "\n",
    );
  } else io.out(formatReport(report).join("\n") + "\n");
  return report.refused > 0 ? 1 : 0;
}

/** An error in words safe to print: the source URL's password never appears. */
function describe(err: unknown, url: string): string {
  let text = err instanceof ImportError ? err.message : ((err as { code?: string })?.code ?? "") + " " + ((err as Error)?.message ?? String(err));
  try {
    const pw = new URL(url).password;
    if (pw) text = text.split(pw).join("***").split(decodeURIComponent(pw)).join("***");
  } catch {
    // Not a parseable URL: nothing to hide beyond what the user typed.
  }
  return text.trim();
}
