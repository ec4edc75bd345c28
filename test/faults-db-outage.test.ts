/**
 * Issue 10, items 2 and 5, against real Postgres through a relay the test breaks: a black-holed TCP
 * path gives every call a bounded answer (statement and connect deadlines, /readyz naming what
 * failed) and heals by itself; a pooled connection that died with the server fails a read only
 * once, invisibly (it is retried), while a write is never sent twice.
 */
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { createApp } from "../src/api/app.ts";
import { openDatabase, type Database } from "../src/db/client.ts";
import { insertRoute, listRoutesByVm } from "../src/db/routes.repo.ts";
import { createLogger } from "../src/log.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { ADMIN_PG_URL, postgresEnabled } from "./helpers/env.ts";
import { fakePlatform, testApp, vm } from "./helpers/fakes.ts";
import { PgPath } from "./helpers/faults-pg-path.ts";

const KEY = "outage-key";
const auth = { Authorization: `Bearer ${KEY}`, "content-type": "application/json" };
// Short deadlines so the suite stays quick; production defaults are 5 s each.
const QUERY_MS = 300;
const CONNECT_MS = 300;
const READY_MS = 500;
/** The longest any answer may take: the query deadline (plus its margin) and a reconnect's backoff. */
const BOUND_MS = QUERY_MS + 1000 + CONNECT_MS + 1000;

const HUNG = Symbol("hung");
/** `p`, or HUNG when it has not settled within `ms` (so a hang fails an assertion instead of the suite). */
async function within<T>(p: Promise<T>, ms: number): Promise<T | typeof HUNG> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([p, new Promise<typeof HUNG>((res) => (timer = setTimeout(() => res(HUNG), ms)))]);
  clearTimeout(timer);
  return r;
}

describe.runIf(await postgresEnabled())("database outages through a broken TCP path", () => {
  let t: TestDb;
  let path: PgPath;
  let database: Database;
  let app: ReturnType<typeof createApp>;
  const lines: string[] = [];

  beforeAll(async () => {
    t = await freshDb("postgres");
    const target = new URL(ADMIN_PG_URL);
    path = new PgPath({ host: target.hostname, port: Number(target.port || 5432) });
    const via = await path.start();
    const url = new URL(t.url!);
    url.host = via;
    database = await openDatabase({ url: url.toString(), max: 3, connectTimeoutMs: CONNECT_MS, queryTimeoutMs: QUERY_MS });
    app = testApp(database, fakePlatform([vm("vm_o")]).platform, [KEY], {
      log: createLogger("debug", {}, (l) => lines.push(l)),
      readinessTimeoutMs: READY_MS,
    });
  });
  afterAll(async () => {
    path.heal();
    await database.close();
    await path.close();
    await t.drop();
  });

  const timed = async (p: Response | Promise<Response>) => {
    const start = performance.now();
    const r = await within(Promise.resolve(p), 10_000);
    return { r, ms: performance.now() - start };
  };

  it("black hole: every route call and /readyz answers within a bound, and all recover once the path heals", async () => {
    expect((await app.request("/vms/vm_o/routes", { headers: auth })).status).toBe(200);
    path.stall();
    onTestFinished(() => path.heal());
    const calls: [string, string, string?][] = [
      ["GET", "/vms/vm_o/routes"],
      ["POST", "/vms/vm_o/routes", JSON.stringify({ subdomain: "hole", target_port: 80 })],
      ["GET", "/routes/rt_nothing"],
      ["DELETE", "/routes/rt_nothing"],
    ];
    const answers = await Promise.all(calls.map(([method, p, body]) => timed(app.request(p, { method, headers: auth, body }))));
    for (const [i, { r, ms }] of answers.entries()) {
      expect(r, `${calls[i]![0]} ${calls[i]![1]} hung`).not.toBe(HUNG);
      const res = r as Response;
      expect([calls[i]![1], res.status, res.headers.get("retry-after")]).toEqual([calls[i]![1], 503, "1"]);
      expect(ms).toBeLessThan(BOUND_MS);
    }
    // Connections dialed during the stall (the pool replaced the stuck ones) time out connecting.
    const again = await timed(app.request("/vms/vm_o/routes", { headers: auth }));
    expect(again.r).not.toBe(HUNG);
    expect((again.r as Response).status).toBe(503);
    expect(again.ms).toBeLessThan(BOUND_MS);

    const ready = await timed(app.request("/readyz"));
    expect(ready.r).not.toBe(HUNG);
    expect(ready.ms).toBeLessThan(READY_MS + 500);
    const body = await (ready.r as Response).json();
    expect((ready.r as Response).status).toBe(503);
    expect(body.error).toBe("not ready: database, migrations");
    // Either the check's own bound or the database's deadlines answer first; both say what happened.
    const timedOut = /^failed: (no answer within 500ms|database unavailable \((CONNECT_TIMEOUT|DB_TIMEOUT): .*\))$/;
    expect(body.checks).toEqual({ database: expect.stringMatching(timedOut), migrations: expect.stringMatching(timedOut), vm_platform: "ok" });
    const causes = lines.map((l) => JSON.parse(l)).filter((l) => l.msg === "database unavailable").map((l) => l.code);
    expect(causes.length).toBeGreaterThan(0);
    expect(causes.filter((c) => c !== "DB_TIMEOUT" && c !== "CONNECT_TIMEOUT")).toEqual([]);

    path.heal();
    const healedAt = performance.now();
    await expect.poll(async () => (await app.request("/vms/vm_o/routes", { headers: auth })).status, { timeout: 5000, interval: 50 }).toBe(200);
    const recoveryMs = performance.now() - healedAt;
    expect(recoveryMs).toBeLessThan(3000);
    // No connection is left stuck: several calls in a row all answer at once.
    for (let i = 0; i < 5; i++) {
      const { r, ms } = await timed(app.request("/vms/vm_o/routes", { headers: auth }));
      expect((r as Response).status).toBe(200);
      expect(ms).toBeLessThan(200);
    }
    expect((await app.request("/readyz")).status).toBe(200);
    console.log(`[faults] black hole: answers in ${answers.map((a) => Math.round(a.ms)).join("/")} ms, /readyz in ${Math.round(ready.ms)} ms, recovered ${Math.round(recoveryMs)} ms after healing`);
  });

  it("a lock whose session dies while held (backend terminated): the holder finishes, the process survives, the next lock is taken", async () => {
    const admin = postgres(ADMIN_PG_URL, { max: 1, onnotice: () => {} });
    const name = new URL(t.url!).pathname.slice(1);
    try {
      for (let i = 0; i < 5; i++) {
        const got = await database.withLock("faults-lock", 2000, async () => {
          await admin.unsafe(`select pg_terminate_backend(pid) from pg_stat_activity where datname = '${name}' and pid <> pg_backend_pid()`);
          await new Promise((r) => setTimeout(r, 50));
          return "held";
        });
        expect(got).toBe("held");
      }
      expect(await database.withLock("faults-lock", 2000, async () => "again")).toBe("again");
      // A write the driver would have buffered for a dead connection must not bring the process down later.
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      await admin.end({ timeout: 2 });
    }
  });

  it.each(["reset", "close"] as const)("a pooled connection the server forgot (%s on next use): reads retried once and succeed, a write fails cleanly and is not sent twice", async (how) => {
    await insertRoute(database, { id: `rt_stale_${how}`, vmId: "vm_o", subdomain: `stale-${how}`, targetPort: 80 });
    // Warm every connection of the pool, then lose their server sides.
    await Promise.all([0, 1, 2].map(() => listRoutesByVm(database, "vm_o")));
    const before = path.accepted;
    path.loseServerSide(how);
    const reads = await Promise.all([0, 1, 2].map(() => app.request("/vms/vm_o/routes", { headers: auth })));
    expect(reads.map((r) => r.status)).toEqual([200, 200, 200]);
    expect((await reads[0]!.json()).map((r: { subdomain: string }) => r.subdomain)).toContain(`stale-${how}`);
    expect(path.accepted).toBeGreaterThan(before);

    // Same again for a write: it may not be resent (it could have run), so the client gets a 503 to retry.
    await listRoutesByVm(database, "vm_o");
    path.loseServerSide(how);
    const write = await app.request("/vms/vm_o/routes", { method: "POST", headers: auth, body: JSON.stringify({ subdomain: `w-${how}`, target_port: 80 }) });
    if (write.status !== 201) expect([write.status, write.headers.get("retry-after")]).toEqual([503, "1"]);
    const after = await app.request("/vms/vm_o/routes", { headers: auth });
    const subs = (await after.json()).map((r: { subdomain: string }) => r.subdomain);
    expect(subs.filter((s: string) => s === `w-${how}`).length).toBe(write.status === 201 ? 1 : 0);
  });
});
