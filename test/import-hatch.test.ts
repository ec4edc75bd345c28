/**
 * `hatch-proxy import-hatch` against a real PostgreSQL holding Hatch's schema (its store's tables
 * images, vms, proxy_routes): good rows keep their ids and timestamps, reserved and malformed rows
 * and taken subdomains are listed and left out, a re-run imports nothing twice, --dry-run writes
 * nothing, and the route API serves Hatch's `rt-` ids.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../src/api/app.ts";
import { createStaticKeyAuth } from "../src/api/auth.ts";
import { testConfig } from "../src/config.ts";
import { openDatabase } from "../src/db/client.ts";
import { insertRoute, listAllRoutes } from "../src/db/routes.repo.ts";
import { runImportHatch } from "../src/cli/import-hatch.ts";
import { silentLogger } from "../src/log.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { postgresEnabled } from "./helpers/env.ts";
import { hatchDatabase } from "./helpers/hatch-db.ts";
import { fakeDirectory, fakePlatform, vm } from "./helpers/fakes.ts";


describe.runIf(await postgresEnabled())("import-hatch from a Hatch database", () => {
  let source: TestDb;
  let target: TestDb;
  let src: postgres.Sql;
  let hatch: Awaited<ReturnType<typeof hatchDatabase>>;
  const run = async (...args: string[]) => {
    let out = "";
    let err = "";
    const code = await runImportHatch(args, { open: () => openDatabase({ url: target.url }) }, { out: (s) => (out += s), err: (s) => (err += s) });
    return { code, out, err };
  };

  beforeAll(async () => {
    hatch = await hatchDatabase();
    source = hatch.db;
    src = hatch.sql;
    target = await freshDb("postgres");
    await src.unsafe(`insert into vms (id, image_id, vcpu_count, mem_mib, user_id) values ('vm-a1', 'img_default', 1, 256, 'user-1'), ('vm-b2', 'img_default', 1, 256, null)`);
    await src.unsafe(`insert into proxy_routes (id, vm_id, subdomain, target_port, auto_wake, created_at, updated_at) values
      ('rt-0123456789abcdef', 'vm-a1', 'shop', 8080, true, '2026-03-06T13:00:00Z', '2026-03-06T13:05:00Z'),
      ('rt-fedcba9876543210', 'vm-b2', 'blog', 3000, false, '2026-03-07T10:00:00Z', '2026-03-07T10:00:00Z'),
      ('rt-1111111111111111', 'vm-a1', 'api', 8080, true, '2026-03-08T00:00:00Z', '2026-03-08T00:00:00Z'),
      ('rt-2222222222222222', 'vm-a1', 'My_App', 8080, true, '2026-03-08T00:00:01Z', '2026-03-08T00:00:01Z'),
      ('rt-3333333333333333', 'vm-b2', 'ports', 70000, true, '2026-03-08T00:00:02Z', '2026-03-08T00:00:02Z'),
      ('rt-4444444444444444', 'vm-b2', 'taken', 8080, true, '2026-03-08T00:00:03Z', '2026-03-08T00:00:03Z')`);
    // Already here, under another id: the import must leave it alone.
    await insertRoute(target.database, { id: "rt_localtaken1234", vmId: "vm_local", subdomain: "taken", targetPort: 9000 });
  });
  afterAll(async () => {
    await hatch?.close();
    await target?.drop();
  });

  const ours = async () => (await listAllRoutes(target.database)).map((r) => [r.id, r.subdomain, r.vmId, r.targetPort, r.autoWake, r.owner]);

  it("--dry-run lists what would happen, writes nothing, and exits 1 because some rows would not go in", async () => {
    const before = await ours();
    const r = await run("--from", source.url!, "--dry-run");
    expect(r.code).toBe(1);
    expect(r.out.split("\n")).toEqual([
      "would import  rt-0123456789abcdef  shop → vm-a1:8080",
      "would import  rt-fedcba9876543210  blog → vm-b2:3000",
      'not imported  rt-1111111111111111  api → vm-a1:8080: subdomain "api" is reserved',
      "not imported  rt-2222222222222222  My_App → vm-a1:8080: subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)",
      "not imported  rt-3333333333333333  ports → vm-b2:70000: target_port must be between 1 and 65535",
      'not imported  rt-4444444444444444  taken → vm-b2:8080: subdomain "taken" is already in use (by rt_localtaken1234 → vm_local)',
      "6 routes in Hatch: 2 would import, 0 already here, 4 not imported (dry run: nothing written)",
      "",
    ]);
    expect(await ours()).toEqual(before);
  });

  it("imports the good rows with their ids, timestamps, auto_wake and owner; a re-run imports nothing twice", async () => {
    const r = await run("--from", source.url!, "--json");
    expect(r.code).toBe(1);
    const report = JSON.parse(r.out);
    expect(report).toMatchObject({ dry_run: false, imported: 2, already_here: 0, not_imported: 4 });
    expect(report.routes.map((x: any) => [x.id, x.outcome])).toEqual([
      ["rt-0123456789abcdef", "imported"],
      ["rt-fedcba9876543210", "imported"],
      ["rt-1111111111111111", "not_imported"],
      ["rt-2222222222222222", "not_imported"],
      ["rt-3333333333333333", "not_imported"],
      ["rt-4444444444444444", "not_imported"],
    ]);
    const rows = await listAllRoutes(target.database);
    const shop = rows.find((x) => x.id === "rt-0123456789abcdef")!;
    expect([shop.subdomain, shop.vmId, shop.targetPort, shop.autoWake, shop.owner]).toEqual(["shop", "vm-a1", 8080, true, "user-1"]);
    expect([shop.createdAt.toISOString(), shop.updatedAt.toISOString()]).toEqual(["2026-03-06T13:00:00.000Z", "2026-03-06T13:05:00.000Z"]);
    expect(rows.find((x) => x.id === "rt-fedcba9876543210")).toMatchObject({ subdomain: "blog", autoWake: false, owner: "" });
    expect(rows.find((x) => x.subdomain === "taken")!.id).toBe("rt_localtaken1234");

    const again = await run("--from", source.url!);
    expect(again.code).toBe(1);
    expect(again.out).toContain("already here  rt-0123456789abcdef  shop → vm-a1:8080");
    expect(again.out).toContain("6 routes in Hatch: 0 imported, 2 already here, 4 not imported");
    expect((await listAllRoutes(target.database)).length).toBe(3);
  });

  it("exits 0 when every row is here, 2 on bad usage, 3 when Hatch's database cannot be read (password never printed)", async () => {
    await src.unsafe("delete from proxy_routes where id in ('rt-1111111111111111', 'rt-2222222222222222', 'rt-3333333333333333', 'rt-4444444444444444')");
    expect((await run("--from", source.url!)).code).toBe(0);
    expect((await run()).code).toBe(2);
    expect((await run("--from", "mysql://x")).code).toBe(2);
    expect((await run("--from", source.url!, "--bogus")).code).toBe(2);
    const bad = await run("--from", "postgres://someone:Sup3rS3cretPw@127.0.0.1:1/hatch");
    expect(bad.code).toBe(3);
    expect(bad.err).toMatch(/^hatch-proxy import-hatch: cannot read Hatch's routes: /);
    expect(bad.err).not.toContain("Sup3rS3cretPw");
    const notHatch = await run("--from", target.url!);
    expect([notHatch.code, notHatch.err]).toEqual([3, "hatch-proxy import-hatch: cannot read Hatch's routes: the source database has no proxy_routes table: is it Hatch's database?\n"]);
  });

  it("the route API serves and deletes routes by Hatch's rt- ids", async () => {
    const app = createApp({
      config: testConfig(),
      database: target.database,
      platform: fakePlatform([vm("vm-a1")]).platform,
      directory: fakeDirectory(),
      auth: createStaticKeyAuth(["k"]),
      log: silentLogger,
    });
    const h = { authorization: "Bearer k" };
    const got = await app.request("/routes/rt-0123456789abcdef", { headers: h });
    expect([got.status, await got.json()]).toEqual([
      200,
      { id: "rt-0123456789abcdef", vm_id: "vm-a1", subdomain: "shop", target_port: 8080, auto_wake: true, created_at: "2026-03-06T13:00:00Z", updated_at: "2026-03-06T13:05:00Z" },
    ]);
    expect((await (await app.request("/vms/vm-a1/routes", { headers: h })).json()).map((r: any) => r.id)).toEqual(["rt-0123456789abcdef"]);
    const del = await app.request("/routes/rt-0123456789abcdef", { method: "DELETE", headers: h });
    expect([del.status, await del.json()]).toEqual([200, { status: "deleted" }]);
  });
});
