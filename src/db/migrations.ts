/**
 * Whether the database carries every migration this code expects. A database being restored (schema
 * created, data not loaded yet), or an older one, answers queries with empty tables: serving those
 * as the truth would drop every route, so readers ask this first.
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

/** Migrations recorded as applied in the database; 0 when drizzle's table does not exist (yet). */
export async function appliedMigrations(d: Database): Promise<number> {
  try {
    const rows = await queryRows<{ n: number }>(d, sql`select count(*)::int as n from drizzle.__drizzle_migrations`);
    return Number(rows[0]?.n ?? 0);
  } catch (err) {
    // No schema or no table: nothing applied. Any other failure is the database's to report.
    for (let e: any = err; e; e = e.cause) if (e.code === "42P01" || e.code === "3F000") return 0;
    throw err;
  }
}

/**
 * Throws DatabaseNotMigratedError unless every migration is applied. A positive answer is trusted
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
    const applied = await appliedMigrations(this.database);
    const want = expectedMigrations();
    if (applied < want) {
      this.okUntil = 0;
      throw new DatabaseNotMigratedError(applied, want);
    }
    this.okUntil = this.now() + this.ttlMs;
  }
}
