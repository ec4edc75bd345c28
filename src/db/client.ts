import { mkdirSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";
import { sql, type SQL } from "drizzle-orm";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import * as schema from "./schema.ts";

export type Db = PgDatabase<PgQueryResultHKT, typeof schema>;

/** The committed drizzle-kit migrations, applied at start by both drivers. */
export const MIGRATIONS_DIR = fileURLToPath(new URL("../../drizzle", import.meta.url));

/**
 * Channel on which every write to routes is announced (LISTEN/NOTIFY, payload: the VM id), so all
 * replicas refresh. A trigger (drizzle/0001_routes_notify.sql) sends it, whoever writes.
 */
export const ROUTES_CHANNEL = "hatch_routes_changed";

export interface Database {
  readonly kind: "postgres" | "pglite";
  readonly db: Db;
  /**
   * Runs `fn` while holding an advisory lock named `key`. On Postgres the lock is shared by every
   * process on the database (a wake happens once across sidecar replicas); PGlite is single-process,
   * so an in-process lock suffices there. Rejects with LockTimeoutError after `timeoutMs`.
   */
  withLock<T>(key: string, timeoutMs: number, fn: () => Promise<T>): Promise<T>;
  /** Announces a change on `channel` to every process listening on this database. */
  notify(channel: string, payload: string): Promise<void>;
  /** Calls `onPayload` for every notification on `channel`; the returned function stops listening. */
  listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>>;
  /** Throws when the database cannot answer a trivial query. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/** Runs a raw SQL query and returns its rows (postgres.js returns the rows, PGlite an object holding them). */
export async function queryRows<T>(d: Database, query: SQL): Promise<T[]> {
  const result: unknown = await d.db.execute(query);
  return (Array.isArray(result) ? result : (result as { rows: unknown[] }).rows) as T[];
}

export class LockTimeoutError extends Error {
  constructor(key: string) {
    super(`timed out waiting for lock ${key}`);
  }
}

/** A 64-bit advisory-lock key derived from a name (stable across processes and versions). */
export function lockKey(name: string): bigint {
  return createHash("sha256").update(`hatch-proxy:${name}`).digest().readBigInt64BE(0);
}

export interface OpenOptions {
  /** postgres:// URL; when absent, PGlite in `dataDir` (or in memory when `dataDir` is undefined). */
  url?: string | undefined;
  dataDir?: string | undefined;
  /** Connection pool size for Postgres. */
  max?: number;
}

/** The database a process is configured for: Postgres with DATABASE_URL, else PGlite in `<data dir>/pglite`. */
export function openConfiguredDatabase(config: { databaseUrl: string | undefined; dataDir: string }): Promise<Database> {
  return openDatabase(config.databaseUrl ? { url: config.databaseUrl } : { dataDir: join(config.dataDir, "pglite") });
}

/** Opens the database and applies pending migrations. */
export async function openDatabase(opts: OpenOptions): Promise<Database> {
  const database = opts.url ? await openPostgres(opts.url, opts.max ?? 10) : await openPglite(opts.dataDir);
  return database;
}

async function openPostgres(url: string, max: number): Promise<Database> {
  const { default: postgres } = await import("postgres");
  const { drizzle } = await import("drizzle-orm/postgres-js");
  const { migrate } = await import("drizzle-orm/postgres-js/migrator");
  const client = postgres(url, { max, onnotice: () => {}, connect_timeout: 10, idle_timeout: 60 });
  // Migrations run on a single connection that holds a session advisory lock, so replicas starting
  // together apply them once.
  const migrator = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    const key = lockKey("migrations");
    await migrator`select pg_advisory_lock(${key.toString()}::bigint)`;
    await migrate(drizzle(migrator), { migrationsFolder: MIGRATIONS_DIR });
    await migrator`select pg_advisory_unlock(${key.toString()}::bigint)`;
  } finally {
    await migrator.end({ timeout: 5 });
  }
  const db = drizzle(client, { schema }) as unknown as Db;
  const listeners: { unlisten: () => Promise<void> }[] = [];
  return {
    kind: "postgres",
    db,
    async withLock(name, timeoutMs, fn) {
      const key = lockKey(name).toString();
      // A reserved connection holds the session lock for exactly the duration of fn.
      const conn = await client.reserve();
      try {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const [row] = await conn`select pg_try_advisory_lock(${key}::bigint) as ok`;
          if (row?.ok) break;
          if (Date.now() >= deadline) throw new LockTimeoutError(name);
          await new Promise((r) => setTimeout(r, 25));
        }
        try {
          return await fn();
        } finally {
          await conn`select pg_advisory_unlock(${key}::bigint)`.catch(() => {});
        }
      } finally {
        conn.release();
      }
    },
    async notify(channel, payload) {
      await client.notify(channel, payload);
    },
    async listen(channel, onPayload) {
      const sub = await client.listen(channel, onPayload);
      listeners.push(sub);
      return () => sub.unlisten();
    },
    async ping() {
      await client`select 1`;
    },
    async close() {
      await client.end({ timeout: 5 });
    },
  };
}

async function openPglite(dataDir: string | undefined): Promise<Database> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  const { migrate } = await import("drizzle-orm/pglite/migrator");
  if (dataDir) mkdirSync(dataDir, { recursive: true });
  const releaseLock = dataDir ? lockDataDir(dataDir) : () => {};
  let pg: InstanceType<typeof PGlite>;
  try {
    pg = dataDir ? await PGlite.create(dataDir) : await PGlite.create();
  } catch (err) {
    releaseLock();
    throw err;
  }
  const db = drizzle(pg, { schema });
  await migrate(db, { migrationsFolder: MIGRATIONS_DIR });
  const locks = new Map<string, Promise<unknown>>();
  return {
    kind: "pglite",
    db: db as unknown as Db,
    async withLock(name, timeoutMs, fn) {
      // PGlite can only be opened by one process: chaining per key is the whole lock.
      const prev = locks.get(name) ?? Promise.resolve();
      let timer: NodeJS.Timeout | undefined;
      const waited = Promise.race([
        prev.catch(() => {}),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new LockTimeoutError(name)), timeoutMs);
        }),
      ]).finally(() => clearTimeout(timer));
      const run = waited.then(fn);
      const tail = run.catch(() => {});
      locks.set(name, tail);
      void tail.then(() => {
        if (locks.get(name) === tail) locks.delete(name);
      });
      return run;
    },
    async notify(channel, payload) {
      await pg.query(`select pg_notify($1, $2)`, [channel, payload]);
    },
    async listen(channel, onPayload) {
      const unsub = await pg.listen(channel, onPayload);
      return () => unsub();
    },
    async ping() {
      await db.execute(sql`select 1`);
    },
    async close() {
      try {
        await pg.close();
      } finally {
        releaseLock();
      }
    },
  };
}

/** Thrown when another live process has the embedded database open. */
export class DataDirInUseError extends Error {
  constructor(dir: string, pid: number) {
    super(
      `the embedded database in ${dir} is in use by process ${pid}; PGlite serves one process only: ` +
        "stop that process, use another HATCH_DATA_DIR, or set DATABASE_URL to share PostgreSQL between processes " +
        `(if process ${pid} is not hatch-proxy, delete ${join(dir, "hatch-proxy.pid")})`,
    );
    this.name = "DataDirInUseError";
  }
}

/**
 * PGlite has no locking of its own and two processes writing one data directory corrupt it, so
 * the directory carries a pid file while open. A file left by a process that no longer runs is taken over.
 */
function lockDataDir(dir: string): () => void {
  const file = join(dir, "hatch-proxy.pid");
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(file, `${process.pid}\n`, { flag: "wx" });
      return () => {
        try {
          if (readFileSync(file, "utf8").trim() === String(process.pid)) unlinkSync(file);
        } catch {
          // Already gone: nothing to release.
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw err;
      const pid = Number(readFileSync(file, "utf8").trim());
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid)) throw new DataDirInUseError(dir, pid);
      unlinkSync(file);
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
