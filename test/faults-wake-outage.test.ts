/**
 * A sleeping VM is woken while Postgres cannot be reached: the wake's cross-replica lock lives in
 * the database, and waking must not depend on it (the route comes from the cache's last good read).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testConfig } from "../src/config.ts";
import { openDatabase, type Database } from "../src/db/client.ts";
import { createLogger } from "../src/log.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer, type WakeProxy } from "../src/wake/proxy.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { ADMIN_PG_URL, postgresEnabled } from "./helpers/env.ts";
import { PgPath } from "./helpers/faults-pg-path.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call } from "./helpers/wake-fixture.ts";

describe.runIf(await postgresEnabled())("a wake while Postgres is unreachable", () => {
  let t: TestDb;
  let path: PgPath;
  let database: Database;
  let sim: Simulator;
  let proxy: WakeProxy;
  let url: string;
  const lines: any[] = [];

  beforeAll(async () => {
    t = await freshDb("postgres");
    const target = new URL(ADMIN_PG_URL);
    path = new PgPath({ host: target.hostname, port: Number(target.port || 5432) });
    const via = new URL(t.url!);
    via.host = await path.start();
    database = await openDatabase({ url: via.toString(), max: 2, connectTimeoutMs: 500, queryTimeoutMs: 500 });
    sim = await createSimulator({ ipPrefix: "127.0.75", restoreMs: 100 });
    const log = createLogger("debug", {}, (l) => lines.push(JSON.parse(l)));
    proxy = createWakeProxy(
      { config: testConfig({ wakePageAfterMs: 0 }), database, platform: sim.platform, directory: fakeDirectory({ platform: sim.platform }), log },
      { embedded: true },
    );
    url = (await startWakeServer(proxy, { host: "127.0.0.1", port: 0 })).url;
  });
  afterAll(async () => {
    path.heal();
    await proxy?.close();
    await sim?.close();
    await database?.close();
    await path?.close();
    await t?.drop();
  });

  it("wakes it without the lock, from the cached route, and says so once in the log", async () => {
    const vm = await sim.createVm();
    const route = await addRoute(t.database, vm.id);
    const host = `${route.subdomain}.hatch.local`;
    expect((await call(url, { host })).status).toBe(200);
    await sim.snapshot(vm.id);
    path.stall();
    const woken = await call(url, { host, path: "/during-outage" });
    expect([woken.status, woken.headers["x-hatch-cold-start"], woken.json().path]).toEqual([200, "1", "/during-outage"]);
    expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    expect(lines.filter((l) => l.msg === "waking without the cross-replica lock: database unavailable")).toHaveLength(1);
    expect(lines.filter((l) => l.msg === "vm wake" && l.outcome === "ok")).toHaveLength(1);
  });
});
