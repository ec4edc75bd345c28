import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";
import { sql, type SQL } from "drizzle-orm";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import type { Options, Sql } from "postgres";
import type { PGlite } from "@electric-sql/pglite";
import { lockDirectory } from "./data-dir-lock.ts";
import { guardedQuery, watchedDialer, withDeadline } from "./deadline.ts";
import { DatabaseTimeoutError } from "./errors.ts";
import { createPglite } from "./pglite.ts";
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
  /** Postgres: longest wait for a connection to be established and authenticated (default 5 s). */
  connectTimeoutMs?: number;
  /**
   * Postgres: the server's statement_timeout; a query (or a connection that went silent) gets no
   * more than this plus a second before it fails (default 5 s).
   */
  queryTimeoutMs?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
export const DEFAULT_QUERY_TIMEOUT_MS = 5000;
/** Room for the server's own statement_timeout error to arrive before the client gives up. */
const DEADLINE_MARGIN_MS = 1000;

/** The database a process is configured for: Postgres with DATABASE_URL, else PGlite in `<data dir>/pglite`. */
export function openConfiguredDatabase(config: { databaseUrl: string | undefined; dataDir: string }): Promise<Database> {
  return openDatabase(config.databaseUrl ? { url: config.databaseUrl } : { dataDir: join(config.dataDir, "pglite") });
}

/** Opens the database and applies pending migrations. */
export async function openDatabase(opts: OpenOptions): Promise<Database> {
  const database = opts.url ? await openPostgres(opts.url, opts) : await openPglite(opts.dataDir);
  return database;
}

/** The postgres.js client as drizzle sees it: every statement under the deadline, reads retried once. */
function guardedClient(client: Sql, deadlineMs: number, onStale: () => Promise<void>): Sql {
  return new Proxy(client, {
    get(target, prop, receiver) {
      if (prop !== "unsafe") return Reflect.get(target, prop, receiver);
      return (query: string, params?: any[], options?: any) => {
        // postgres.js queries run when awaited; so do these (drizzle awaits them, or their values()).
        const run = (values: boolean) => () => {
          const q = target.unsafe(query, params, options);
          return values ? q.values() : q;
        };
        const lazy = (values: boolean) => ({
          then: (ok?: (v: any) => unknown, ko?: (e: unknown) => unknown) => guardedQuery(run(values), query, deadlineMs, onStale).then(ok, ko),
        });
        return Object.assign(lazy(false), { values: () => lazy(true) });
      };
    },
  });
}

async function openPostgres(url: string, opts: OpenOptions): Promise<Database> {
  const { default: postgres } = await import("postgres");
  const { drizzle } = await import("drizzle-orm/postgres-js");
  const { migrate } = await import("drizzle-orm/postgres-js/migrator");
  const connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const queryTimeoutMs = opts.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS;
  const deadlineMs = queryTimeoutMs + DEADLINE_MARGIN_MS;
  const dialer = watchedDialer(deadlineMs);
  const onStale = () => dialer.recycleIdle();
  const client = postgres(url, {
    max: opts.max ?? 10,
    onnotice: () => {},
    connect_timeout: connectTimeoutMs / 1000,
    idle_timeout: 60,
    // The driver's default backoff grows to 20 s between reconnects during an outage, so the first
    // requests after the database is back would still fail; a second is enough to spare it.
    backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 1),
    connection: { statement_timeout: queryTimeoutMs },
    socket: dialer.dial,
  } as Options<{}>);
  // Migrations run on a single connection that holds a session advisory lock, so replicas starting
  // together apply them once. No statement timeout: a migration may rightly take long.
  const migrator = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: connectTimeoutMs / 1000 });
  try {
    const key = lockKey("migrations");
    await migrator`select pg_advisory_lock(${key.toString()}::bigint)`;
    await migrate(drizzle(migrator), { migrationsFolder: MIGRATIONS_DIR });
    await migrator`select pg_advisory_unlock(${key.toString()}::bigint)`;
  } finally {
    await migrator.end({ timeout: 5 });
  }
  const db = drizzle(guardedClient(client, deadlineMs, onStale), { schema }) as unknown as Db;
  const listeners: { unlisten: () => Promise<void> }[] = [];
  return {
    kind: "postgres",
    db,
    async withLock(name, timeoutMs, fn) {
      const key = lockKey(name).toString();
      // A session of its own holds the lock for exactly the duration of fn. Not a connection
      // reserved from the pool: postgres.js writes to a reserved connection even after its backend
      // died, which throws from a timer and takes the process down (porsager/postgres#1208). A
      // plain client reconnects instead, and `lost` keeps the unlock off a new session.
      let lost = false;
      const session = postgres(url, {
        max: 1,
        onnotice: () => {},
        connect_timeout: connectTimeoutMs / 1000,
        socket: dialer.dial,
        onclose: () => void (lost = true),
      } as Options<{}>);
      try {
        const deadline = Date.now() + timeoutMs;
        const acquire = async () => {
          for (;;) {
            const [row] = await session`select pg_try_advisory_lock(${key}::bigint) as ok`;
            if (row?.ok) return;
            if (Date.now() >= deadline) throw new LockTimeoutError(name);
            await new Promise((r) => setTimeout(r, 25));
          }
        };
        // Waiting for the session counts against the lock's timeout (the database may not answer).
        await withDeadline(acquire(), Math.max(1, timeoutMs), "a database lock").catch((err: unknown) => {
          throw err instanceof DatabaseTimeoutError ? new LockTimeoutError(name) : err;
        });
        try {
          return await fn();
        } finally {
          // A lost session took the lock with it.
          if (!lost) await withDeadline(session`select pg_advisory_unlock(${key}::bigint)`, deadlineMs, "an unlock").catch(() => {});
        }
      } finally {
        await session.end({ timeout: 1 }).catch(() => {});
      }
    },
    async notify(channel, payload) {
      await withDeadline(client.notify(channel, payload), deadlineMs, "a database notification");
    },
    async listen(channel, onPayload) {
      const sub = await withDeadline(client.listen(channel, onPayload), deadlineMs, "a database subscription", (late) => void late.unlisten().catch(() => {}));
      listeners.push(sub);
      return () => sub.unlisten();
    },
    async ping() {
      await guardedQuery(() => client`select 1`.then(() => undefined), "select 1", deadlineMs, onStale);
    },
    async close() {
      await client.end({ timeout: 5 });
    },
  };
}

/** Applies the migrations to a PGlite instance; returns drizzle on it. */
export async function migratePglite(pg: PGlite) {
  const { drizzle } = await import("drizzle-orm/pglite");
  const { migrate } = await import("drizzle-orm/pglite/migrator");
  const db = drizzle(pg, { schema });
  await migrate(db, { migrationsFolder: MIGRATIONS_DIR });
  return db;
}

async function openPglite(dataDir: string | undefined): Promise<Database> {
  if (dataDir) mkdirSync(dataDir, { recursive: true });
  const releaseLock = dataDir ? lockDirectory(dataDir) : () => {};
  let pg: PGlite;
  try {
    pg = await createPglite(dataDir);
  } catch (err) {
    releaseLock();
    throw err;
  }
  const db = await migratePglite(pg);
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

export { DataDirInUseError } from "./data-dir-lock.ts";

/** Where the database lives, in words safe to print (no password). */
export function describeDatabase(config: { databaseUrl: string | undefined; dataDir: string }): string {
  if (!config.databaseUrl) return `PGlite (embedded) in ${join(config.dataDir, "pglite")}`;
  const u = new URL(config.databaseUrl);
  return `PostgreSQL at ${u.hostname}:${u.port || 5432}${u.pathname}`;
}
