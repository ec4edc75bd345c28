/**
 * Whether the database carries every migration this code expects, whole. A database being restored
 * (schema created, data or constraints not loaded yet), or an older one, answers queries with empty
 * tables: serving those as the truth would drop every route, so readers ask this first.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { MIGRATIONS_DIR, queryRows, type Database } from "./client.ts";
import { DatabaseNotMigratedError } from "./errors.ts";

let expected: number | undefined;

/** The number of committed migrations (drizzle's journal). */
export function expectedMigrations(): number {
  expected ??= (JSON.parse(readFileSync(join(MIGRATIONS_DIR, "meta/_journal.json"), "utf8")).entries as unknown[]).length;
  return expected;
}

/**
 * What settles races and announces changes: the unique and primary keys, and the NOTIFY triggers.
 * A dump restored step by step creates them last (pg_restore's post-data section), after the data,
 * so a database that has every migration recorded but lacks one of these is still being restored.
 */
export const ESSENTIAL_OBJECTS = [
  "routes_pkey",
  "routes_subdomain_key",
  "routes_notify",
  "vm_activity_pkey",
  "vm_connections_pkey",
  "vm_sleeps_pkey",
  "vm_sleeps_notify",
  "leases_pkey",
  "owner_credentials_pkey",
  "routes_owner_credentials_cleanup",
] as const;

export interface SchemaState {
  /** Migrations recorded as applied; 0 when drizzle's table does not exist (yet). */
  applied: number;
  expected: number;
  /** Essential constraints and triggers that are not there (only looked for when all migrations are applied). */
  missing: string[];
}

/** One query: how far the database's schema is from what this code expects. */
export async function schemaState(d: Database): Promise<SchemaState> {
  const names = sql.raw(ESSENTIAL_OBJECTS.map((n) => `('${n}')`).join(", "));
  try {
    const [row] = await queryRows<{ applied: number; missing: string[] | string | null }>(
      d,
      sql`select (select count(*)::int from drizzle.__drizzle_migrations) as applied,
        (select coalesce(string_agg(n, ',' order by n), '') from (values ${names}) as e(n)
          where not exists (select 1 from pg_constraint c where c.conname = e.n and pg_table_is_visible(c.conrelid))
            and not exists (select 1 from pg_trigger t where t.tgname = e.n and not t.tgisinternal and pg_table_is_visible(t.tgrelid))) as missing`,
    );
    const missing = typeof row?.missing === "string" && row.missing ? row.missing.split(",") : [];
    return { applied: Number(row?.applied ?? 0), expected: expectedMigrations(), missing };
  } catch (err) {
    // No schema or no table: nothing applied. Any other failure is the database's to report.
    for (let e: any = err; e; e = e.cause) if (e.code === "42P01" || e.code === "3F000") return { applied: 0, expected: expectedMigrations(), missing: [] };
    throw err;
  }
}

/** The state in words, or undefined when the schema is complete. */
export function schemaProblem(s: SchemaState): string | undefined {
  if (s.applied < s.expected) return `${s.applied} of ${s.expected} migrations applied`;
  if (s.missing.length) return `schema incomplete, missing ${s.missing.join(", ")}`;
  return undefined;
}

/**
 * Throws DatabaseNotMigratedError unless every migration is applied and the schema is whole. A positive answer is trusted
 * for `ttlMs` (a request path should not pay a query for it each time); a negative one never is.
 */
export class MigrationGate {
  private okUntil = 0;
  private pending: Promise<void> | undefined;

  constructor(
    private readonly database: Database,
    private readonly ttlMs = 1000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Resolves when migrated; `fresh` asks the database even within the trusted window. */
  ensure(fresh = false): Promise<void> {
    if (!fresh && this.now() < this.okUntil) return Promise.resolve();
    // Concurrent callers share one query.
    this.pending ??= this.check().finally(() => (this.pending = undefined));
    return this.pending;
  }

  /** Forgets a positive answer (after a failure that suggests the database changed under us). */
  forget(): void {
    this.okUntil = 0;
  }

  private async check(): Promise<void> {
    const problem = schemaProblem(await schemaState(this.database));
    if (problem) {
      this.okUntil = 0;
      throw new DatabaseNotMigratedError(problem);
    }
    this.okUntil = this.now() + this.ttlMs;
  }
}
