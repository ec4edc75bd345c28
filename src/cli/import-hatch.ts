/**
 * `hatch-proxy import-hatch --from <postgres url> [--dry-run] [--json]`: brings the routes of a Hatch
 * installation (its `proxy_routes` table) into this one, keeping ids and timestamps. Rows that
 * break this project's rules, and subdomains already taken here, are listed and left out; a re-run
 * imports nothing twice. Exit 0 when every row is here afterwards, 1 when some are not, 3 when a
 * database could not be read or written. Beside a running instance that holds the embedded
 * database, the rows go through its route API (import-remote.ts), with the same rules and report.
 */
import postgres from "postgres";
import { importRoutes, reportJson, type HatchRoute, type ImportReportJson } from "../api/route-import.ts";
import type { Database } from "../db/client.ts";
import { DataDirInUseError } from "../db/data-dir-lock.ts";
import { CliError, type ApiTarget } from "./http-client.ts";
import { importThroughApi } from "./import-remote.ts";

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

/** The report for people: one line per row that needs attention, then the totals. */
export function formatReport(rep: ImportReportJson): string[] {
  const lines: string[] = [];
  const verb = rep.dry_run ? "would import" : "imported";
  for (const r of rep.routes) {
    const what = `${r.id}  ${r.subdomain} → ${r.vm_id}:${r.target_port}`;
    if (r.outcome === "imported" || r.outcome === "would_import") lines.push(`${verb}  ${what}`);
    else if (r.outcome === "already_here") lines.push(`already here  ${what}`);
    else lines.push(`not imported  ${what}: ${r.why}`);
  }
  lines.push(
    `${rep.routes.length} route${rep.routes.length === 1 ? "" : "s"} in Hatch: ${rep.imported} ${verb}, ${rep.already_here} already here, ${rep.not_imported} not imported${rep.dry_run ? " (dry run: nothing written)" : ""}`,
  );
  return lines;
}

export const IMPORT_USAGE = `Usage: hatch-proxy import-hatch --from <postgres url> [--dry-run] [--json]

Copies the routes of a Hatch installation (its proxy_routes table) into this one's database
(DATABASE_URL, or the embedded one in HATCH_DATA_DIR), keeping ids and timestamps. Rows that break
the route rules, and subdomains already taken here, are listed and left out. Running it again
imports nothing twice. While hatch-proxy runs on the embedded database (which only its process can
open), the rows go through its route API (the URL it records in the data directory, with the key
the routes commands use).
  --from <url>   Hatch's PostgreSQL (postgres://…); nothing is written there
  --dry-run      say what would happen, write nothing
  --json         the report as JSON on stdout
Exit: 0 every route is here, 1 some were not imported, 2 bad usage, 3 a database failed.`;

/** Where the rows go: this installation's database, or the running instance that holds it. */
export interface ImportDestination {
  open(): Promise<Database>;
  /** The route API of the process holding the embedded database (asked when open() finds it in use). */
  running?(): ApiTarget;
}

/** Runs the command; resolves with the exit code. */
export async function runImportHatch(argv: readonly string[], dest: ImportDestination, io: { out(s: string): void; err(s: string): void }): Promise<number> {
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
  const dryRun = Boolean(values["dry-run"]);
  let report: ImportReportJson;
  try {
    report = await importHere(dest, routes, dryRun, values.json ? () => {} : (s) => io.err(s));
  } catch (err) {
    const hint = err instanceof CliError && err.hint ? `\n${err.hint}` : "";
    io.err(`hatch-proxy import-hatch: cannot write the routes here: ${describe(err, from)}${hint}\n`);
    return 3;
  }
  if (values.json) io.out(JSON.stringify(report) + "\n");
  else io.out(formatReport(report).join("\n") + "\n");
  return report.not_imported > 0 ? 1 : 0;
}

/** Imports into the database, or through the running instance that holds it. */
async function importHere(dest: ImportDestination, routes: readonly HatchRoute[], dryRun: boolean, say: (s: string) => void): Promise<ImportReportJson> {
  let database: Database;
  try {
    database = await dest.open();
  } catch (err) {
    if (!(err instanceof DataDirInUseError) || !dest.running) throw err;
    const target = dest.running();
    say(`hatch-proxy import-hatch: process ${err.pid} serves the embedded database: sending the rows to its route API at ${target.url}\n`);
    return importThroughApi(target, routes, dryRun);
  }
  try {
    return reportJson(await importRoutes(database, routes, dryRun));
  } finally {
    await database.close().catch(() => {});
  }
}

/** An error in words safe to print: the source URL's password never appears. */
function describe(err: unknown, url: string): string {
  let text = err instanceof ImportError || err instanceof CliError ? err.message : ((err as { code?: string })?.code ?? "") + " " + ((err as Error)?.message ?? String(err));
  try {
    const pw = new URL(url).password;
    if (pw) text = text.split(pw).join("***").split(decodeURIComponent(pw)).join("***");
  } catch {
    // Not a parseable URL: nothing to hide beyond what the user typed.
  }
  return text.trim();
}
