/**
 * Issue 10, item 3: a database that is not fully migrated (restored schema without data, an older
 * version, drizzle's bookkeeping gone) is never the source of a Traefik config, and the route API
 * answers 503 on it instead of an empty list or a write. Against PGlite and Postgres, and through a
 * real dump and restore on Postgres, table by table.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../src/api/app.ts";
import { createStaticKeyAuth } from "../src/api/auth.ts";
import { testConfig } from "../src/config.ts";
import { openDatabase, type Database } from "../src/db/client.ts";
import { insertRoute } from "../src/db/routes.repo.ts";
import { silentLogger } from "../src/log.ts";
import { createConfigService, type ConfigService } from "../src/traefik/config-service.ts";
import { traefikEndpoint } from "../src/traefik/endpoint.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";
import { ADMIN_PG_URL, postgresEnabled, requirePostgres } from "./helpers/env.ts";
import { fakeDirectory, fakePlatform, vm } from "./helpers/fakes.ts";

const KEY = "restore-key";
const auth = { Authorization: `Bearer ${KEY}`, "content-type": "application/json" };
const MIGRATIONS = 6;
const ROUTES = 65;

const services: ConfigService[] = [];
afterEach(async () => {
  await Promise.all(services.splice(0).map((s) => s.stop()));
});

/** A config service and its endpoint over `database`, with every VM of `vms` running. */
async function configOn(database: Database, vmIds: string[], resyncMs = 100) {
  const directory = fakeDirectory({ vms: vmIds.map((id, i) => ({ id, state: "running" as const, guest_ip: `127.0.9.${(i % 250) + 1}` })) });
  const service = createConfigService({ database, directory, config: testConfig(), log: silentLogger, resyncMs });
  services.push(service);
  await service.start();
  const endpoint = traefikEndpoint(service, { config: testConfig(), log: silentLogger, clientAddress: () => "127.0.0.1" });
  const routers = async () => {
    const res = await endpoint.request("/config");
    return res.status === 200 ? Object.keys(((await res.json()) as any).http.routers).length : res.status;
  };
  return { service, endpoint, routers };
}

function apiOn(database: Database) {
  return createApp({ config: testConfig(), database, platform: fakePlatform([vm("vm_r0")]).platform, directory: fakeDirectory(), auth: createStaticKeyAuth([KEY]), log: silentLogger });
}

async function fill(database: Database, n: number): Promise<string[]> {
  const vms: string[] = [];
  for (let i = 0; i < n; i++) {
    vms.push(`vm_r${i}`);
    await insertRoute(database, { id: `rt_r${i}`, vmId: `vm_r${i}`, subdomain: `site-${i}`, targetPort: 8080 });
  }
  return vms;
}

const count = async (d: Database, table: string) => {
  const r: any = await d.db.execute(sql.raw(`select count(*)::int as n from ${table}`));
  return Number((Array.isArray(r) ? r : r.rows)[0].n);
};

// Ways a database can answer without being this code's database.
const UNMIGRATED: [string, string, string][] = [
  ["restored schema, bookkeeping not loaded yet", "delete from drizzle.__drizzle_migrations", `0 of ${MIGRATIONS} migrations applied`],
  ["an older database (the last migration missing)", "delete from drizzle.__drizzle_migrations where id = (select max(id) from drizzle.__drizzle_migrations)", `${MIGRATIONS - 1} of ${MIGRATIONS} migrations applied`],
  ["drizzle's schema gone", "drop schema drizzle cascade", `0 of ${MIGRATIONS} migrations applied`],
  // pg_restore creates keys and triggers after the data: all migrations recorded, schema not whole.
  ["keys and triggers not restored yet", "alter table routes drop constraint routes_subdomain_key; drop trigger routes_notify on routes; alter table vm_sleeps drop constraint vm_sleeps_pkey", "schema incomplete, missing routes_notify, routes_subdomain_key, vm_sleeps_pkey"],
];
const RESTORE_SCHEMA = [
  "alter table routes add constraint routes_subdomain_key unique (subdomain)",
  "create trigger routes_notify after insert or update or delete on routes for each row execute function hatch_routes_notify()",
  "alter table vm_sleeps add constraint vm_sleeps_pkey primary key (vm_id)",
];

describe.each(await dbKinds())("a database that is not fully migrated, on %s", (kind) => {
  let t: TestDb;
  let vms: string[];
  beforeAll(async () => {
    t = await freshDb(kind);
    vms = await fill(t.database, 8);
  });
  afterAll(() => t.drop());

  it.each(UNMIGRATED)("%s: the route API answers 503 and writes nothing, /readyz says what is missing, no config is built from it", async (_what, statement, problem) => {
    const snapshot: any = await t.database.db.execute(sql.raw("select * from drizzle.__drizzle_migrations order by id"));
    const rows = (Array.isArray(snapshot) ? snapshot : snapshot.rows) as { id: number; hash: string; created_at: string }[];
    const good = await configOn(t.database, vms);
    // hatch-api, hatch-streams, hatch-wake (no hatch-vm-api: the simulator's calls go through the API).
    expect(await good.routers()).toBe(3 + 2 * 8);
    const goodBody = await (await good.endpoint.request("/config")).text();
    for (const st of statement.split("; ")) await t.database.db.execute(sql.raw(st));
    try {
      const app = apiOn(t.database);
      for (const [method, path, body] of [["GET", "/vms/vm_r0/routes"], ["POST", "/vms/vm_r0/routes", JSON.stringify({ subdomain: "written", target_port: 80 })], ["GET", "/routes/rt_r0"], ["DELETE", "/routes/rt_r1"]] as const) {
        const res = await app.request(path, { method, headers: auth, body });
        expect([method, res.status, res.headers.get("retry-after")]).toEqual([method, 503, "1"]);
        expect(await res.json()).toMatchObject({ error: `database not ready (${problem}): try again shortly`, code: "database_not_migrated" });
      }
      expect(await count(t.database, "routes")).toBe(8);
      const ready = await (await app.request("/readyz")).json();
      expect(ready.checks.migrations).toBe(problem);

      // A running service keeps its last good config through resyncs and full re-reads.
      await t.database.db.execute(sql`delete from routes where id = 'rt_r7'`);
      await good.service.refresh();
      await new Promise((r) => setTimeout(r, 300));
      expect(await (await good.endpoint.request("/config")).text()).toBe(goodBody);
      expect(good.service.health().lastError).toBe(`database not fully migrated (${problem})`);
      // A service starting now builds nothing: Traefik keeps what it has.
      const fresh = await configOn(t.database, vms);
      const res = await fresh.endpoint.request("/config");
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ error: `traefik config not built yet: database not fully migrated (${problem})` });
    } finally {
      // Put the bookkeeping back as it was (and the deleted route), for the next case.
      await t.database.db.execute(sql.raw("create schema if not exists drizzle"));
      await t.database.db.execute(sql.raw("create table if not exists drizzle.__drizzle_migrations (id serial primary key, hash text not null, created_at bigint)"));
      await t.database.db.execute(sql.raw("delete from drizzle.__drizzle_migrations"));
      for (const r of rows) await t.database.db.execute(sql`insert into drizzle.__drizzle_migrations (id, hash, created_at) values (${r.id}, ${r.hash}, ${r.created_at})`);
      await t.database.db.execute(sql`insert into routes (id, vm_id, subdomain, target_port) values ('rt_r7', 'vm_r7', 'site-7', 8080) on conflict do nothing`);
      if (problem.startsWith("schema incomplete")) for (const st of RESTORE_SCHEMA) await t.database.db.execute(sql.raw(st));
    }
  });
});

const pgTools = (() => {
  try {
    execFileSync("pg_restore", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    if (requirePostgres) throw new Error("REQUIRE_POSTGRES=1 but pg_dump/pg_restore are not installed");
    return false;
  }
})();

describe.runIf((await postgresEnabled()) && pgTools)("a Postgres database dropped and restored from a dump", () => {
  const admin = postgres(ADMIN_PG_URL, { max: 1, onnotice: () => {} });
  const dir = mkdtempSync(join(tmpdir(), "hatch-restore-"));
  afterAll(async () => {
    await admin.end({ timeout: 2 });
    rmSync(dir, { recursive: true, force: true });
  });

  it("serves the last good config and 503s through every stage, and the restored data once it is all there", async () => {
    const t = await freshDb("postgres");
    const url = t.url!;
    const name = new URL(url).pathname.slice(1);
    const restore = (...args: string[]) => execFileSync("pg_restore", ["--no-owner", "-d", url, ...args, join(dir, "dump")], { stdio: "pipe" });
    let database: Database | undefined;
    try {
      const vms = await fill(t.database, ROUTES);
      await t.database.close();
      execFileSync("pg_dump", ["-Fc", "-f", join(dir, "dump"), url]);
      database = await openDatabase({ url, max: 3, connectTimeoutMs: 500, queryTimeoutMs: 1000 });
      const app = apiOn(database);
      const good = await configOn(database, vms);
      // hatch-api, hatch-streams, hatch-wake, and two per route of a running VM.
      const expected = 3 + 2 * ROUTES;
      expect(await good.routers()).toBe(expected);
      const goodBody = await (await good.endpoint.request("/config")).text();
      const api = async () => (await app.request("/vms/vm_r0/routes", { headers: auth })).status;
      /** Every check a stage must pass: the last good bytes, a 503 from the API, and (later) a fresh service building nothing. */
      const holds = async (stage: string) => {
        await good.service.refresh();
        await new Promise((r) => setTimeout(r, 250));
        expect([stage, await (await good.endpoint.request("/config")).text() === goodBody]).toEqual([stage, true]);
        expect([stage, await api()]).toEqual([stage, 503]);
      };

      await admin.unsafe(`drop database ${name} with (force)`);
      await holds("dropped");
      await admin.unsafe(`create database ${name}`);
      await holds("created, empty");
      restore("--section=pre-data");
      await holds("schema restored, no data");
      const fresh = await configOn(database, vms);
      expect(await fresh.routers()).toBe(503);
      restore("--section=data", "-n", "drizzle");
      // Every migration is recorded now, the routes are not loaded yet.
      await holds("migrations recorded, routes empty");
      expect(await fresh.routers()).toBe(503);
      restore("--section=data", "-n", "public");
      // The data is in, the keys and triggers (post-data) are not: writes would not be settled by
      // the UNIQUE index nor announced.
      await holds("data loaded, no keys or triggers");
      expect(await fresh.routers()).toBe(503);
      restore("--section=post-data");
      await expect.poll(() => good.routers(), { timeout: 5000, interval: 100 }).toBe(expected);
      await expect.poll(() => fresh.routers(), { timeout: 5000, interval: 100 }).toBe(expected);
      expect(await (await good.endpoint.request("/config")).text()).toBe(goodBody);
      await expect.poll(api, { timeout: 3000, interval: 100 }).toBe(200);
    } finally {
      await database?.close();
      await t.drop();
    }
  }, 30_000);
});
