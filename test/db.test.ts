import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { openDatabase, ROUTES_CHANNEL } from "../src/db/client.ts";
import { insertRoute, listRoutesByVm, SubdomainTakenError, getRouteBySubdomain } from "../src/db/routes.repo.ts";
import { deleteRoutesById } from "../src/db/credentials.repo.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";

const row = (id: string, subdomain: string, vmId = "vm_1") => ({ id, vmId, subdomain, targetPort: 8080 });

describe.each(await dbKinds())("database on %s", (kind) => {
  let t: TestDb;
  beforeAll(async () => {
    t = await freshDb(kind);
  });
  afterAll(() => t.drop());

  it("rejects a second route with the same subdomain through the UNIQUE index", async () => {
    await insertRoute(t.database, row("rt_a1", "dup"));
    await expect(insertRoute(t.database, row("rt_a2", "dup"))).rejects.toBeInstanceOf(SubdomainTakenError);
    expect((await getRouteBySubdomain(t.database, "dup"))?.id).toBe("rt_a1");
  });

  it("refuses a target port outside 1-65535 by CHECK constraint", async () => {
    await expect(insertRoute(t.database, { ...row("rt_p", "p"), targetPort: 70000 })).rejects.toThrow();
    expect(await getRouteBySubdomain(t.database, "p")).toBeUndefined();
  });

  it("lists routes of a VM newest first and deletes exactly the ones named", async () => {
    await insertRoute(t.database, row("rt_b1", "b1", "vm_b"));
    await insertRoute(t.database, row("rt_b2", "b2", "vm_b"));
    expect((await listRoutesByVm(t.database, "vm_b")).map((r) => r.id)).toEqual(["rt_b2", "rt_b1"]);
    expect(await deleteRoutesById(t.database, ["rt_b1", "rt_b2", "rt_nope"])).toBe(2);
    expect(await listRoutesByVm(t.database, "vm_b")).toEqual([]);
  });

  it("serialises work under one lock name", async () => {
    const order: string[] = [];
    let holding: () => void = () => {};
    const held = new Promise<void>((r) => (holding = r));
    const slow = t.database.withLock("k", 5000, async () => {
      order.push("a-start");
      holding();
      await new Promise((r) => setTimeout(r, 100));
      order.push("a-end");
    });
    // Asked for only once the first holds it (a fixed pause lost that race on a loaded machine).
    await held;
    const second = t.database.withLock("k", 5000, async () => order.push("b"));
    await Promise.all([slow, second]);
    expect(order).toEqual(["a-start", "a-end", "b"]);
  });

  it("delivers notifications to listeners", async () => {
    const got: string[] = [];
    const stop = await t.database.listen("hatch_test_chan", (p) => got.push(p));
    await t.database.notify("hatch_test_chan", "hello");
    await expect.poll(() => got).toEqual(["hello"]);
    await stop();
  });
});

describe("PGlite data directory", () => {
  it("refuses a second open while the first is live, and takes over a lock left by a dead process", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hatch-pglite-lock-"));
    try {
      const first = await openDatabase({ dataDir: dir });
      await expect(openDatabase({ dataDir: dir })).rejects.toThrow(
        new RegExp(`^the embedded database in ${dir} is in use by process ${process.pid}; PGlite serves one process only`),
      );
      await first.close();
      expect(existsSync(join(dir, "hatch-proxy.pid"))).toBe(false);
      // A pid file whose process is gone (pid 2^22 + 1 is above Linux's pid_max) does not block.
      writeFileSync(join(dir, "hatch-proxy.pid"), "4194305\n");
      const again = await openDatabase({ dataDir: dir });
      expect(readFileSync(join(dir, "hatch-proxy.pid"), "utf8").trim()).toBe(String(process.pid));
      await again.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps routes across a reopen", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hatch-pglite-"));
    try {
      const first = await openDatabase({ dataDir: dir });
      await insertRoute(first, row("rt_keep", "keep"));
      await first.close();
      const second = await openDatabase({ dataDir: dir });
      expect((await getRouteBySubdomain(second, "keep"))?.id).toBe("rt_keep");
      await second.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.each(await dbKinds())("route change notifications on %s", (kind) => {
  it("announces inserts and deletes with the VM id, from the database itself", async () => {
    const t = await freshDb(kind);
    try {
      const got: string[] = [];
      const stop = await t.database.listen(ROUTES_CHANNEL, (p) => got.push(p));
      await insertRoute(t.database, row("rt_n1", "n1", "vm_n"));
      await expect.poll(() => got).toEqual(["vm_n"]);
      // A write by another tool (raw SQL) is announced too.
      await t.database.db.execute(sql`delete from routes where id = 'rt_n1'`);
      await expect.poll(() => got).toEqual(["vm_n", "vm_n"]);
      await stop();
    } finally {
      await t.drop();
    }
  });
});
