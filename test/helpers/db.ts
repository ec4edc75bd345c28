import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import { openDatabase, type Database } from "../../src/db/client.ts";
import { ADMIN_PG_URL, postgresEnabled } from "./env.ts";
import { seededDataDir } from "./pglite-template.ts";

export type DbKind = "pglite" | "postgres";

/** The database kinds a suite should run on: always PGlite, Postgres when reachable (or required). */
export async function dbKinds(): Promise<DbKind[]> {
  return (await postgresEnabled()) ? ["pglite", "postgres"] : ["pglite"];
}

export interface TestDb {
  database: Database;
  /** The URL of the fresh Postgres database (undefined for PGlite): open a second instance on it. */
  url: string | undefined;
  drop(): Promise<void>;
}

/** A fresh, migrated database: PGlite in a new directory (a copy of the template), or a new Postgres database; dropped afterwards. */
export async function freshDb(kind: DbKind): Promise<TestDb> {
  if (kind === "pglite") {
    const dir = seededDataDir("hatch-test-db-");
    const database = await openDatabase({ dataDir: join(dir, "pglite") });
    return {
      database,
      url: undefined,
      async drop() {
        await database.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const name = `hatch_test_${process.pid}_${randomBytes(4).toString("hex")}`;
  const admin = postgres(ADMIN_PG_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database ${name}`);
  const url = new URL(ADMIN_PG_URL);
  url.pathname = `/${name}`;
  const database = await openDatabase({ url: url.toString() });
  return {
    database,
    url: url.toString(),
    async drop() {
      await database.close().catch(() => {});
      await admin.unsafe(`drop database if exists ${name} with (force)`);
      await admin.end({ timeout: 2 });
    },
  };
}
