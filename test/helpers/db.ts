import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { openDatabase, type Database } from "../../src/db/client.ts";
import { ADMIN_PG_URL, postgresEnabled } from "./env.ts";

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

/** A fresh, migrated database: in-memory PGlite, or a new Postgres database dropped afterwards. */
export async function freshDb(kind: DbKind): Promise<TestDb> {
  if (kind === "pglite") {
    const database = await openDatabase({});
    return { database, url: undefined, drop: () => database.close() };
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
