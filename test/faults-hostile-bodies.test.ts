/**
 * Issue 10, item 13: the unknown-field check looks at own keys only, everywhere a request body is
 * validated; a key every object inherits (constructor, toString, __proto__, …) is as unknown as any.
 */
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApp } from "../src/api/app.ts";
import { checkCreateRoute } from "../src/api/routes.schemas.ts";
import type { Database } from "../src/db/client.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakePlatform, testApp, vm } from "./helpers/fakes.ts";

const KEY = "bodies-key";
const headers = { Authorization: `Bearer ${KEY}`, "content-type": "application/json" };
// Every name an object inherits, __proto__ included.
const INHERITED = Object.getOwnPropertyNames(Object.prototype);

/** A JSON text with `extra` as an own key (JSON.parse keeps "__proto__" as one). */
const withKey = (base: Record<string, unknown>, extra: string) => JSON.stringify(base).replace(/}$/, `,${JSON.stringify(extra)}:1}`);

describe("inherited names in request bodies", () => {
  let t: TestDb;
  let database: Database;
  let app: ReturnType<typeof createApp>;
  let sim: Simulator;
  beforeAll(async () => {
    t = await freshDb("pglite");
    database = t.database;
    sim = await createSimulator({ ipPrefix: "127.78.13" });
    app = testApp(database, fakePlatform([vm("vm_b")]).platform, [KEY]);
  });
  afterAll(async () => {
    await sim.close();
    await t.drop();
  });

  it("covers what it claims", () => {
    expect(INHERITED).toEqual(expect.arrayContaining(["constructor", "toString", "hasOwnProperty", "valueOf", "__proto__", "isPrototypeOf", "toLocaleString", "__defineGetter__"]));
  });

  it.each(INHERITED)("POST /vms/{id}/routes with %s is a 400 unknown field, and nothing is created", async (name) => {
    const res = await app.request("/vms/vm_b/routes", { method: "POST", headers, body: withKey({ target_port: 80, subdomain: "proto-probe" }, name) });
    expect([res.status, (await res.json()).error]).toEqual([400, `unknown field ${JSON.stringify(name)}`]);
    expect(checkCreateRoute(JSON.parse(withKey({ target_port: 80 }, name)))).toEqual({ ok: false, error: `unknown field ${JSON.stringify(name)}` });
    const rows: any = await database.db.execute(sql`select count(*)::int as n from routes`);
    expect(Number((Array.isArray(rows) ? rows : rows.rows)[0].n)).toBe(0);
  });

  it.each(INHERITED)("POST /vms/{id}/sleep with %s is a 400 unknown field", async (name) => {
    const sleepApp = testApp(database, fakePlatform([vm("vm_b")]).platform, [KEY], {
      sleep: { sleeper: { sleep: async () => ({ outcome: "not_running" }) } as never, activity: {} as never },
    });
    const body = withKey({ action: "snapshot" }, name);
    // The endpoint reads a body only when one is announced, as an HTTP client does.
    const res = await sleepApp.request("/vms/vm_b/sleep", { method: "POST", headers: { ...headers, "content-length": String(Buffer.byteLength(body)) }, body });
    expect([res.status, (await res.json()).error]).toEqual([400, `unknown field ${JSON.stringify(name)}`]);
  });

  it.each(INHERITED)("the simulator's POST /vms with %s is a 400 unknown field, and no VM is created", async (name) => {
    const res = await sim.app.request("/vms", { method: "POST", headers: { "content-type": "application/json" }, body: withKey({ restore_ms: 10 }, name) });
    expect([res.status, (await res.json()).error]).toEqual([400, `unknown field "${name}"`]);
    expect(sim.listVms()).toEqual([]);
  });
});
