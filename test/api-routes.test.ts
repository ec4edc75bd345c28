import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { sql } from "drizzle-orm";
import { createApp } from "../src/api/app.ts";
import { createStaticKeyAuth } from "../src/api/auth.ts";
import { RESERVED_SUBDOMAINS } from "../src/api/routes.schemas.ts";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";
import { fakePlatform, fakeDirectory, vm } from "./helpers/fakes.ts";

const KEY = "test-key-1";
const auth = { Authorization: `Bearer ${KEY}` };
const json = { ...auth, "Content-Type": "application/json" };

describe.each(await dbKinds())("routes API on %s", (kind) => {
  let t: TestDb;
  let app: ReturnType<typeof createApp>;
  let fake: ReturnType<typeof fakePlatform>;
  const directory = fakeDirectory();

  beforeAll(async () => {
    t = await freshDb(kind);
    fake = fakePlatform([vm("vm_abc"), vm("vm_other"), vm("vm_sleepy", "snapshotted")]);
    app = createApp({
      config: testConfig(),
      database: t.database,
      platform: fake.platform,
      directory,
      auth: createStaticKeyAuth([KEY]),
      log: silentLogger,
    });
  });
  afterAll(() => t.drop());
  beforeEach(async () => {
    fake.state.down = false;
    await t.database.db.execute(sql`delete from routes`);
  });

  const create = (body: unknown, vmId = "vm_abc", headers: Record<string, string> = json) =>
    app.request(`/vms/${vmId}/routes`, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) });
  const count = async () => {
    const res = (await t.database.db.execute(sql`select count(*)::int as n from routes`)) as any;
    return Number((Array.isArray(res) ? res : res.rows)[0].n);
  };
  const expectError = async (res: Response, status: number, error: string) => {
    expect(res.status).toBe(status);
    expect(res.headers.get("content-type")).toMatch(/^application\/json/);
    const body = await res.json();
    expect(body.error).toBe(error);
    expect(body.request_id).toMatch(/^[a-z0-9]{16}$/);
    expect(res.headers.get("x-request-id")).toBe(body.request_id);
  };

  it("creates a route with Hatch's shape and 201", async () => {
    const res = await create({ subdomain: "myapp", target_port: 8080 });
    expect(res.status).toBe(201);
    const body = await res.json();
    expect(Object.keys(body).sort()).toEqual(["auto_wake", "created_at", "id", "subdomain", "target_port", "updated_at", "vm_id"]);
    expect(body).toMatchObject({ vm_id: "vm_abc", subdomain: "myapp", target_port: 8080, auto_wake: true });
    expect(body.id).toMatch(/^rt_[a-z0-9]{16}$/);
    expect(res.headers.get("x-request-id")).toMatch(/^[a-z0-9]{16}$/);
    expect(body.created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(Math.abs(Date.parse(body.created_at) - Date.now())).toBeLessThan(5000);
    expect(directory.peek("vm_abc")?.state).toBe("running");
  });

  it("generates a 12-character subdomain when none is given, and honours auto_wake false", async () => {
    for (const body of [{ target_port: 3000, auto_wake: false }, { target_port: 3000, subdomain: "", auto_wake: false }, { target_port: 3000, subdomain: null, auto_wake: false }]) {
      const res = await create(body);
      expect(res.status).toBe(201);
      const route = await res.json();
      expect(route.subdomain).toMatch(/^[a-z0-9]{12}$/);
      expect(RESERVED_SUBDOMAINS.has(route.subdomain)).toBe(false);
      expect(route.auto_wake).toBe(false);
    }
    expect(await count()).toBe(3);
  });

  it("reads a body with no Content-Type as JSON, and refuses curl -d's form type with a 415 saying how to send JSON", async () => {
    // A byte body (unlike a string) makes Request add no Content-Type, as a bare HTTP client sends.
    const bytes = new TextEncoder().encode('{"subdomain":"nocontent","target_port":80}');
    const plain = await app.request("/vms/vm_abc/routes", { method: "POST", headers: auth, body: bytes });
    expect(plain.headers.get("content-type")).toMatch(/json/);
    expect(plain.status).toBe(201);
    const form = await create('{"subdomain":"curl-d","target_port":80}', "vm_abc", { ...auth, "Content-Type": "application/x-www-form-urlencoded" });
    await expectError(form, 415, `unsupported content type "application/x-www-form-urlencoded": send application/json (with curl -d, add -H 'Content-Type: application/json')`);
  });

  const bad: [string, unknown, number, string][] = [
    ["non-JSON", "{nope", 400, "request body is not valid JSON: "],
    ["an array", "[1,2]", 400, "request body must be a JSON object, not an array"],
    ["a string", '"x"', 400, "request body must be a JSON object, not string"],
    ["null", "null", 400, "request body must be a JSON object, not null"],
    ["empty", "", 400, "request body is empty: send a JSON object"],
    ["an unknown field", { target_port: 80, subdomian: "x" }, 400, 'unknown field "subdomian"'],
    ["two unknown fields", { target_port: 80, a: 1, b: 2 }, 400, 'unknown fields "a", "b"'],
    ["target_port missing", { subdomain: "x" }, 400, "target_port is required (an integer from 1 to 65535)"],
    ["target_port as string", { target_port: "8080" }, 400, "target_port must be an integer (a JSON number, not a string)"],
    ["target_port as float", { target_port: 80.5 }, 400, "target_port must be an integer, not a fraction"],
    ["target_port 0", { target_port: 0 }, 400, "target_port must be between 1 and 65535"],
    ["target_port 65536", { target_port: 65536 }, 400, "target_port must be between 1 and 65535"],
    ["target_port negative", { target_port: -1 }, 400, "target_port must be between 1 and 65535"],
    ["auto_wake as string", { target_port: 80, auto_wake: "yes" }, 400, "auto_wake must be a boolean (true or false)"],
    ["subdomain as number", { target_port: 80, subdomain: 5 }, 400, "subdomain must be a string"],
    ["uppercase subdomain", { target_port: 80, subdomain: "MyApp" }, 400, "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)"],
    ["leading hyphen", { target_port: 80, subdomain: "-app" }, 400, "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)"],
    ["trailing hyphen", { target_port: 80, subdomain: "app-" }, 400, "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)"],
    ["64 characters", { target_port: 80, subdomain: "a".repeat(64) }, 400, "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)"],
    ["a dot", { target_port: 80, subdomain: "a.b" }, 400, "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)"],
    ["an underscore", { target_port: 80, subdomain: "a_b" }, 400, "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)"],
    ["non-ASCII", { target_port: 80, subdomain: "café" }, 400, "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)"],
    ["reserved", { target_port: 80, subdomain: "api" }, 400, 'subdomain "api" is reserved'],
    ["port checked before subdomain", { target_port: 0, subdomain: "API" }, 400, "target_port must be between 1 and 65535"],
  ];
  it.each(bad)("refuses %s with a specific 400 and writes nothing", async (_name, body, status, error) => {
    const res = await create(body);
    if (error.endsWith(": ")) {
      expect(res.status).toBe(status);
      expect((await res.json()).error).toMatch(new RegExp(`^${error}\\S`));
    } else await expectError(res, status, error);
    expect(await count()).toBe(0);
  });

  it("accepts the longest valid subdomain (63 chars) and every reserved word is refused", async () => {
    expect((await create({ target_port: 80, subdomain: `a${"-".repeat(61)}b` })).status).toBe(201);
    for (const word of RESERVED_SUBDOMAINS) await expectError(await create({ target_port: 80, subdomain: word }), 400, `subdomain "${word}" is reserved`);
    expect(await count()).toBe(1);
  });

  it("answers 413 for bodies over 64 KiB and 415 for other content types", async () => {
    await expectError(await create({ target_port: 80, subdomain: "big", pad: "x".repeat(70_000) }), 413, "request body too large (limit 64 KiB)");
    await expectError(await create("target_port=80", "vm_abc", { ...auth, "Content-Type": "text/plain" }), 415, 'unsupported content type "text/plain": send application/json');
    expect(await count()).toBe(0);
  });

  it("answers 404 not found for an unknown VM, after validating the body", async () => {
    await expectError(await create({ target_port: 80, subdomain: "ghost" }, "vm_missing"), 404, "not found");
    await expectError(await create({ target_port: 0 }, "vm_missing"), 400, "target_port must be between 1 and 65535");
    await expectError(await app.request("/vms/vm_missing/routes", { headers: auth }), 404, "not found");
    await expectError(await app.request("/vms/%20bad%2Fid/routes", { headers: auth }), 404, "not found");
    expect(await count()).toBe(0);
  });

  it("answers 503, not 500, when the VM platform is down", async () => {
    fake.state.down = true;
    const res = await create({ target_port: 80, subdomain: "down" });
    await expectError(res, 503, "VM platform unavailable: try again shortly");
    expect(await count()).toBe(0);
  });

  it("answers 409 for a subdomain in use", async () => {
    expect((await create({ target_port: 80, subdomain: "taken" })).status).toBe(201);
    await expectError(await create({ target_port: 81, subdomain: "taken" }, "vm_other"), 409, 'subdomain "taken" is already in use');
    expect(await count()).toBe(1);
  });

  it("lists newest first with a stable order, [] when empty, and only that VM's routes", async () => {
    const empty = await app.request("/vms/vm_abc/routes", { headers: auth });
    expect(empty.status).toBe(200);
    expect(await empty.text()).toBe("[]");
    const ids: string[] = [];
    for (const s of ["one", "two", "three"]) ids.push((await (await create({ target_port: 80, subdomain: s })).json()).id);
    await create({ target_port: 80, subdomain: "elsewhere" }, "vm_other");
    // Same created_at for all: the id breaks the tie, so two reads agree.
    await t.database.db.execute(sql`update routes set created_at = '2026-01-01T00:00:00Z' where subdomain in ('one','two')`);
    const first = await (await app.request("/vms/vm_abc/routes", { headers: auth })).json();
    const second = await (await app.request("/vms/vm_abc/routes", { headers: auth })).json();
    expect(first.map((r: any) => r.subdomain)).toEqual(["three", ...["one", "two"].sort((a, b) => (ids[["one", "two"].indexOf(b)]! > ids[["one", "two"].indexOf(a)]! ? 1 : -1))]);
    expect(second).toEqual(first);
    expect(first).toHaveLength(3);
  });

  it("gets and deletes a route by id; unknown ids are 404", async () => {
    const route = await (await create({ target_port: 80, subdomain: "gone-soon" })).json();
    const got = await app.request(`/routes/${route.id}`, { headers: auth });
    expect(got.status).toBe(200);
    expect(await got.json()).toEqual(route);
    const del = await app.request(`/routes/${route.id}`, { method: "DELETE", headers: auth });
    expect(del.status).toBe(200);
    expect(await del.json()).toEqual({ status: "deleted" });
    await expectError(await app.request(`/routes/${route.id}`, { method: "DELETE", headers: auth }), 404, "not found");
    await expectError(await app.request(`/routes/${route.id}`, { headers: auth }), 404, "not found");
    expect(await count()).toBe(0);
  });

  it("settles 50 simultaneous creates of one subdomain with exactly one 201", async () => {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => create({ target_port: 1000 + i, subdomain: "race" })));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s === 409)).toHaveLength(49);
    for (const r of results.filter((r) => r.status === 409)) expect((await r.json()).error).toBe('subdomain "race" is already in use');
    expect(await count()).toBe(1);
  });

  it("answers JSON 404 for unknown paths and 405 with Allow for wrong methods", async () => {
    await expectError(await app.request("/nope", { headers: auth }), 404, "not found");
    const put = await app.request("/vms/vm_abc/routes", { method: "PUT", headers: auth });
    expect(put.headers.get("allow")).toBe("GET, POST");
    await expectError(put, 405, "method not allowed");
    const patch = await app.request("/routes/rt_x", { method: "PATCH" });
    expect(patch.status).toBe(405);
    expect(patch.headers.get("allow")).toBe("GET, DELETE");
  });

  it("requires a key on every route endpoint with Hatch's 401 texts", async () => {
    const calls: [string, string][] = [["POST", "/vms/vm_abc/routes"], ["GET", "/vms/vm_abc/routes"], ["GET", "/routes/rt_x"], ["DELETE", "/routes/rt_x"]];
    for (const [method, path] of calls) {
      await expectError(await app.request(path, { method }), 401, "missing api key");
      await expectError(await app.request(path, { method, headers: { Authorization: "Basic abc" } }), 401, "invalid authorization header");
      await expectError(await app.request(path, { method, headers: { Authorization: "Bearer wrong" } }), 401, "invalid api key");
      await expectError(await app.request(path, { method, headers: { "X-API-Key": "wrong" } }), 401, "invalid api key");
    }
    const viaHeader = await app.request("/vms/vm_abc/routes", { headers: { "X-API-Key": KEY } });
    expect(viaHeader.status).toBe(200);
    expect(await count()).toBe(0);
  });

  it("serves health, readiness and an OpenAPI document without a key", async () => {
    expect(await (await app.request("/healthz")).json()).toEqual({ status: "ok" });
    const ready = await app.request("/readyz");
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: "ready", checks: { database: "ok", migrations: "ok", vm_platform: "ok" } });
    fake.state.down = true;
    const notReady = await app.request("/readyz");
    expect(notReady.status).toBe(503);
    expect((await notReady.json()).checks.vm_platform).toBe("failed (see the log)");
    const doc = await (await app.request("/openapi.json")).json();
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(["/vms/{vm_id}/routes", "/routes/{route_id}", "/traefik/config", "/healthz", "/readyz"]));
    expect(Object.keys(doc.paths["/vms/{vm_id}/routes"].post.responses)).toEqual(["201", "400", "401", "404", "409", "413", "415", "503"]);
    expect(doc.components.schemas.CreateRoute.properties.target_port).toMatchObject({ type: "integer", minimum: 1, maximum: 65535 });
  });

  it("counts requests in /metrics", async () => {
    await app.request("/vms/vm_abc/routes", { headers: auth });
    const text = await (await app.request("/metrics")).text();
    expect(text).toMatch(/hatch_api_requests_total\{method="GET",route="\/vms\/:vm_id\/routes",code="200"\} \d+/);
  });
});
