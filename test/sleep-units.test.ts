/**
 * The sleep half's pieces without sockets: Traefik metrics parsing and change detection, router
 * confirmation, the activity recorder's writes, and the database transitions that settle races.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sql } from "drizzle-orm";
import { queryRows } from "../src/db/client.ts";
import { getIdleFacts, listIdleFacts, openConnections, recordActivity } from "../src/db/activity.repo.ts";
import { acquireLease, beginSleep, cancelIdleSleep, endSleep, heartbeatSleep, listActiveSleeps, releaseLease, startSleeping } from "../src/db/sleeps.repo.ts";
import { ActivityRecorder } from "../src/lifecycle/activity.ts";
import { silentLogger } from "../src/log.ts";
import { parseServiceCounts, TraefikFronts } from "../src/traefik/fronts.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";
import { addRoute } from "./helpers/wake-fixture.ts";

const METRICS = `# HELP traefik_service_requests_total How many HTTP requests processed on a service, partitioned by status code, protocol, and method.
# TYPE traefik_service_requests_total counter
traefik_service_requests_total{code="200",method="GET",protocol="http",service="rt_a@http"} 7
traefik_service_requests_total{code="200",method="POST",protocol="http",service="rt_a@http"} 3
traefik_service_requests_total{code="502",method="GET",protocol="http",service="rt_b@http"} 1
traefik_service_requests_total{code="200",method="GET",protocol="http",service="hatch-wake@http"} 40
traefik_service_requests_total{service="odd\\"name@file",code="200"} 2
traefik_service_requests_total_other{service="rt_a@http"} 99
traefik_router_requests_total{code="200",method="GET",protocol="http",router="rt_a@http",service="rt_a@http"} 10
`;

describe("Traefik metrics", () => {
  it("sums requests per service, provider suffix dropped, other metrics and HELP lines ignored", () => {
    expect(Object.fromEntries(parseServiceCounts(METRICS))).toEqual({ rt_a: 10, rt_b: 1, "hatch-wake": 40, 'odd"name@file': 2 });
    expect(parseServiceCounts("").size).toBe(0);
  });

  /** A fake Traefik: metrics text and router statuses per instance, or down. */
  function fakeTraefik() {
    const state = { metrics: METRICS, down: false, routers: new Map<string, number>(), calls: 0 };
    const fetcher = (async (url: string) => {
      state.calls += 1;
      if (state.down) throw new TypeError("fetch failed");
      if (url.endsWith("/metrics")) return new Response(state.metrics);
      const name = decodeURIComponent(/\/routers\/(.+)@http$/.exec(url)![1]!);
      return new Response("{}", { status: state.routers.get(name) ?? 404 });
    }) as typeof fetch;
    return { state, fetcher };
  }

  it("reports which services moved since the last read: the first read is a baseline, new and reset series count, an outage starts over", async () => {
    const t = fakeTraefik();
    const fronts = new TraefikFronts({ urls: ["http://t1:9092/"], timeoutMs: 100, log: silentLogger, fetch: t.fetcher });
    expect(fronts.urls).toEqual(["http://t1:9092"]);
    expect(await fronts.scrape()).toEqual({ changed: new Set(), failed: [] });
    t.state.metrics = METRICS.replace('service="rt_a@http"} 3', 'service="rt_a@http"} 4') + 'traefik_service_requests_total{service="rt_new@http"} 1\n';
    expect((await fronts.scrape()).changed).toEqual(new Set(["rt_a", "rt_new"]));
    expect(fronts.lastChangeOf("rt_a")).toBeGreaterThan(Date.now() - 1000);
    expect(fronts.lastChangeOf("rt_b")).toBeUndefined();
    // A restarted Traefik counts from zero: a drop is a change too.
    t.state.metrics = 'traefik_service_requests_total{service="rt_a@http"} 1\n';
    expect((await fronts.scrape()).changed).toEqual(new Set(["rt_a"]));
    t.state.down = true;
    expect(await fronts.scrape()).toEqual({ changed: new Set(), failed: ["http://t1:9092"] });
    t.state.down = false;
    t.state.metrics = 'traefik_service_requests_total{service="rt_a@http"} 5\n';
    expect((await fronts.scrape()).changed).toEqual(new Set());
  });

  it("confirms routers are gone only when every instance answers 404 for each; any other answer blocks", async () => {
    const a = fakeTraefik();
    const b = fakeTraefik();
    const both = (async (url: string, init?: RequestInit) => (url.startsWith("http://a") ? a.fetcher(url, init) : b.fetcher(url, init))) as typeof fetch;
    const fronts = new TraefikFronts({ urls: ["http://a:1", "http://b:1"], timeoutMs: 100, log: silentLogger, fetch: both });
    expect(await fronts.routersAbsent(["rt_x", "rt_x-get"])).toEqual({ absent: true, unreadable: [], present: [] });
    b.state.routers.set("rt_x-get", 200);
    expect(await fronts.routersAbsent(["rt_x", "rt_x-get"])).toEqual({ absent: false, unreadable: [], present: ["http://b:1 rt_x-get"] });
    b.state.routers.set("rt_x-get", 500);
    expect(await fronts.routersAbsent(["rt_x", "rt_x-get"])).toEqual({ absent: false, unreadable: ["http://b:1"], present: [] });
    a.state.down = true;
    expect((await fronts.routersAbsent(["rt_x"])).unreadable).toContain("http://a:1");
    const none = new TraefikFronts({ urls: [], timeoutMs: 100, log: silentLogger });
    expect(none.configured).toBe(false);
    expect(await none.routersAbsent(["rt_x"])).toEqual({ absent: true, unreadable: [], present: [] });
  });
});

describe.each(await dbKinds())("sleep state in the database (%s)", (kind) => {
  let t: TestDb;
  beforeAll(async () => {
    t = await freshDb(kind);
  });
  afterAll(async () => {
    await t.drop();
  });

  it("a sleep per VM: the second begin is busy, a stale holder's row is taken over, only a draining idle sleep can be cancelled", async () => {
    const s = { vmId: "vm_s1", reason: "idle" as const, action: "snapshot" as const, holder: "h1", staleMs: 5000 };
    expect(await beginSleep(t.database, s)).toHaveProperty("row.phase", "draining");
    expect(await beginSleep(t.database, { ...s, holder: "h2" })).toHaveProperty("busy.holder", "h1");
    expect(await heartbeatSleep(t.database, "vm_s1", "h2")).toBe(false);
    expect(await cancelIdleSleep(t.database, "vm_s1", "request")).toBe(true);
    expect(await startSleeping(t.database, "vm_s1", "h1")).toBe(false);
    expect(await listActiveSleeps(t.database, 5000)).toEqual([]);
    await endSleep(t.database, "vm_s1", "h1");

    // An API sleep cannot be cancelled by a request; once sleeping, nothing cancels it.
    expect(await beginSleep(t.database, { ...s, reason: "api" })).toHaveProperty("row.reason", "api");
    expect(await cancelIdleSleep(t.database, "vm_s1", "request")).toBe(false);
    expect(await startSleeping(t.database, "vm_s1", "h1")).toBe(true);
    expect((await listActiveSleeps(t.database, 5000)).map((r) => r.phase)).toEqual(["sleeping"]);
    // A holder that stopped heartbeating: ignored by readers, taken over by the next begin.
    await t.database.db.execute(sql`update vm_sleeps set heartbeat_at = now() - interval '1 minute'`);
    expect(await listActiveSleeps(t.database, 5000)).toEqual([]);
    expect(await beginSleep(t.database, { ...s, holder: "h3" })).toHaveProperty("row.holder", "h3");
    await endSleep(t.database, "vm_s1", "h1");
    expect(await listActiveSleeps(t.database, 5000)).toHaveLength(1);
    await endSleep(t.database, "vm_s1", "h3");
  });

  it("a lease has one holder until it expires or is released", async () => {
    expect(await acquireLease(t.database, "lease-test", "a", 60_000)).toBe(true);
    expect(await acquireLease(t.database, "lease-test", "b", 60_000)).toBe(false);
    expect(await acquireLease(t.database, "lease-test", "a", 60_000)).toBe(true);
    await t.database.db.execute(sql`update leases set expires_at = now() - interval '1 second' where name = 'lease-test'`);
    expect(await acquireLease(t.database, "lease-test", "b", 60_000)).toBe(true);
    await releaseLease(t.database, "lease-test", "b");
    expect(await acquireLease(t.database, "lease-test", "a", 60_000)).toBe(true);
  });

  it("activity only moves forward; a VM never reached counts from its first route; open counts of dead holders are ignored", async () => {
    await addRoute(t.database, "vm_act");
    const facts = (await getIdleFacts(t.database, "vm_act", 5000))!;
    expect(facts.lastActivityAt).toBeUndefined();
    expect(+facts.idleSince).toBe(+facts.firstRouteAt);
    await recordActivity(t.database, [{ vmId: "vm_act", agoMs: 0 }]);
    const now = (await getIdleFacts(t.database, "vm_act", 5000))!.lastActivityAt!;
    await recordActivity(t.database, [{ vmId: "vm_act", agoMs: 60_000 }]);
    expect(+(await getIdleFacts(t.database, "vm_act", 5000))!.lastActivityAt!).toBe(+now);

    const recorder = new ActivityRecorder({ database: t.database, holder: "proc-1", flushMs: 60_000, log: silentLogger });
    const release = recorder.hold("vm_act");
    recorder.hold("vm_act");
    await recorder.flush();
    expect(await openConnections(t.database, "vm_act", 5000)).toBe(2);
    expect((await listIdleFacts(t.database, 5000)).find((f) => f.vmId === "vm_act")!.openConnections).toBe(2);
    release();
    release();
    await recorder.flush();
    expect(await openConnections(t.database, "vm_act", 5000)).toBe(1);
    await t.database.db.execute(sql`update vm_connections set seen_at = now() - interval '1 minute'`);
    expect(await openConnections(t.database, "vm_act", 5000)).toBe(0);
    // The next flush is a heartbeat for what is still open.
    await recorder.flush();
    expect(await openConnections(t.database, "vm_act", 5000)).toBe(1);
    await recorder.stop();
    expect(await queryRows(t.database, sql`select * from vm_connections where holder = 'proc-1'`)).toEqual([]);
    // An open connection is activity for as long as it lasts: its flushes moved the clock.
    expect(+(await getIdleFacts(t.database, "vm_act", 5000))!.lastActivityAt!).toBeGreaterThan(+now);
  });
});
