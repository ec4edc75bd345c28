/**
 * Issue 10, item 4: a route write invalidates only what it changed, and while the database cannot
 * be read every known route is answered from its last good read (said once in the log, counted in
 * metrics), so a blip right after a write takes no site down and sleeping VMs still wake.
 */
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testConfig } from "../src/config.ts";
import type { Database } from "../src/db/client.ts";
import { createLogger, silentLogger } from "../src/log.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { createRouteCache } from "../src/wake/resolve.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call } from "./helpers/wake-fixture.ts";

/** The database with its queries failing while `down` (notifications and locks keep working). */
function blinking(database: Database) {
  const state = { down: false };
  const db = new Proxy(database.db, {
    get(target, prop, receiver) {
      if (state.down) throw Object.assign(new Error("connect ECONNREFUSED 10.1.1.1:5432"), { code: "ECONNREFUSED", syscall: "connect" });
      return Reflect.get(target, prop, receiver);
    },
  });
  return { state, database: { ...database, db } as Database };
}

function capture() {
  const lines: string[] = [];
  return { log: createLogger("debug", {}, (l) => lines.push(l)), logged: () => lines.map((l) => JSON.parse(l) as Record<string, any>) };
}

async function metric(registry: Registry, name: string): Promise<number> {
  const line = (await registry.metrics()).split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : NaN;
}

describe.each(await dbKinds())("route cache on %s", (kind) => {
  let t: TestDb;
  beforeAll(async () => {
    t = await freshDb(kind);
  });
  afterAll(() => t.drop());

  it("a write invalidates its VM's routes and the misses only; during a blip right after it, every known route is still answered", async () => {
    const b = blinking(t.database);
    const { log, logged } = capture();
    const registry = new Registry();
    const cache = createRouteCache(b.database, { ttlMs: 60_000, log, registry });
    try {
      const others = await Promise.all(Array.from({ length: 30 }, (_, i) => addRoute(t.database, `vm_rc_other${i % 3}`)));
      const mine = await addRoute(t.database, "vm_rc_written");
      for (const r of [...others, mine]) expect((await cache.get(r.subdomain))?.id).toBe(r.id);
      expect(await cache.get("rc-nobody")).toBeUndefined();

      // A write on one VM, then the database goes away before anyone re-reads.
      const added = await addRoute(t.database, "vm_rc_written");
      await new Promise((r) => setTimeout(r, 200)); // the notification arrives
      b.state.down = true;
      for (const r of others) expect((await cache.get(r.subdomain))?.id).toBe(r.id);
      // The written VM's routes changed: re-read first, and from the last good read while that fails.
      expect((await cache.get(mine.subdomain))?.id).toBe(mine.id);
      // A name never read (the new route, a cached miss invalidated by the write) cannot be answered.
      await expect(cache.get(added.subdomain)).rejects.toThrow();
      await expect(cache.get("rc-nobody")).rejects.toThrow();
      expect(await metric(registry, "hatch_route_cache_database_away")).toBe(1);
      expect(await metric(registry, "hatch_route_cache_stale_total")).toBeGreaterThanOrEqual(1);
      expect(await metric(registry, "hatch_route_lookup_failures_total")).toBe(2);
      const warned = logged().filter((l) => l.msg === "route lookups cannot read the database; serving known routes from the last good read");
      expect(warned).toHaveLength(1);
      expect(warned[0]!.cause).toBe("ECONNREFUSED on connect: the database cannot be reached");

      b.state.down = false;
      expect((await cache.get(added.subdomain))?.id).toBe(added.id);
      expect(await metric(registry, "hatch_route_cache_database_away")).toBe(0);
      expect(logged().filter((l) => l.msg === "route lookups read the database again")).toHaveLength(1);
      expect(await cache.get("rc-nobody")).toBeUndefined();
    } finally {
      await cache.close();
    }
  });

  it("an expired route is answered from the last good read while the database is away, and a flood of unknown names evicts no known route", async () => {
    let clock = 1_000_000;
    const b = blinking(t.database);
    const { log, logged } = capture();
    const cache = createRouteCache(b.database, { ttlMs: 1000, log, now: () => clock, maxAbsent: 500 });
    try {
      const route = await addRoute(t.database, "vm_rc_ttl");
      expect((await cache.get(route.subdomain))?.id).toBe(route.id);
      // Past the cap on remembered misses: only misses are forgotten.
      for (let i = 0; i < 1200; i++) await cache.get(`rc-scan-${i}`);
      b.state.down = true;
      clock += 5000;
      for (let i = 0; i < 20; i++) expect((await cache.get(route.subdomain))?.id).toBe(route.id);
      await new Promise((r) => setTimeout(r, 50));
      // One line for the outage, not one per refresh or per name.
      expect(logged().filter((l) => l.level === "warn" || l.level === "error")).toHaveLength(1);
    } finally {
      await cache.close();
    }
  });
});

describe("the sidecar during a database blip right after a route write", () => {
  let t: TestDb;
  let sim: Simulator;
  beforeAll(async () => {
    t = await freshDb("pglite");
    sim = await createSimulator({ ipPrefix: "127.78.4", restoreMs: 100 });
  });
  afterAll(async () => {
    await sim.close();
    await t.drop();
  });

  it("serves running VMs, wakes a sleeping one, and counts what it answered from the last good read", async () => {
    const running = await sim.createVm();
    const sleeping = await sim.createVm();
    const written = await sim.createVm();
    const rRunning = await addRoute(t.database, running.id);
    const rSleeping = await addRoute(t.database, sleeping.id);
    const rWritten = await addRoute(t.database, written.id);
    const b = blinking(t.database);
    const config = testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0 });
    const directory = fakeDirectory({ platform: sim.platform });
    const proxy = createWakeProxy({ config, database: b.database, platform: sim.platform, directory, log: silentLogger }, { embedded: true });
    const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
    try {
      for (const r of [rRunning, rSleeping, rWritten]) expect((await call(server.url, { host: `${r.subdomain}.hatch.local` })).status).toBe(200);
      await sim.snapshot(sleeping.id);
      await directory.refreshAll();
      await addRoute(t.database, written.id);
      await new Promise((r) => setTimeout(r, 200));
      b.state.down = true;
      const answers = await Promise.all([rRunning, rSleeping, rWritten].map((r) => call(server.url, { host: `${r.subdomain}.hatch.local` })));
      expect(answers.map((a) => [a.status, a.json().vm_id])).toEqual([
        [200, running.id],
        [200, sleeping.id],
        [200, written.id],
      ]);
      expect(answers[1]!.headers["x-hatch-cold-start"]).toBe("1");
      const unknown = await call(server.url, { host: "never-seen.hatch.local" });
      expect([unknown.status, unknown.json()]).toEqual([503, { error: "route lookup failed" }]);
      const text = await proxy.registry.metrics();
      expect(text).toMatch(/^hatch_route_cache_database_away 1$/m);
      expect(text).toMatch(/^hatch_route_lookup_failures_total 1$/m);
    } finally {
      b.state.down = false;
      await proxy.close();
      await server.close();
    }
  });
});
