/**
 * `POST /admin/import-hatch`, what `import-hatch` sends to a running instance on the embedded
 * database: the import's rules and report, an operator key only, and a clear 400 for a body that
 * is not Hatch's rows.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listAllRoutes } from "../src/db/routes.repo.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakePlatform, testApp } from "./helpers/fakes.ts";

const KEY = "import-operator-key";
const row = (id: string, subdomain: string, extra: Record<string, unknown> = {}) => ({
  id,
  vm_id: "vm-a1",
  subdomain,
  target_port: 8080,
  auto_wake: true,
  owner: "user-1",
  created_at: "2026-03-06T13:00:00.000Z",
  updated_at: "2026-03-06T13:05:00.000Z",
  ...extra,
});

describe("POST /admin/import-hatch", () => {
  let t: TestDb;
  let app: ReturnType<typeof testApp>;
  beforeAll(async () => {
    t = await freshDb("pglite");
    app = testApp(t.database, fakePlatform().platform, [KEY]);
  });
  afterAll(async () => t?.drop());

  const post = async (body: unknown, headers: Record<string, string> = { authorization: `Bearer ${KEY}` }, a = app) => {
    const res = await a.request("/admin/import-hatch", { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as any };
  };

  it("applies the import's rules and answers its report; a dry run writes nothing", async () => {
    const body = { dry_run: true, routes: [row("rt-0123456789abcdef", "shop"), row("rt-1111111111111111", "api"), row("rt-2222222222222222", "ports", { target_port: 70000 })] };
    const dry = await post(body);
    expect(dry).toEqual({
      status: 200,
      json: {
        dry_run: true,
        imported: 1,
        already_here: 0,
        not_imported: 2,
        routes: [
          { id: "rt-0123456789abcdef", vm_id: "vm-a1", subdomain: "shop", target_port: 8080, outcome: "would_import" },
          { id: "rt-1111111111111111", vm_id: "vm-a1", subdomain: "api", target_port: 8080, outcome: "not_imported", why: 'subdomain "api" is reserved' },
          { id: "rt-2222222222222222", vm_id: "vm-a1", subdomain: "ports", target_port: 70000, outcome: "not_imported", why: "target_port must be between 1 and 65535" },
        ],
      },
    });
    expect(await listAllRoutes(t.database)).toEqual([]);
    const done = await post({ ...body, dry_run: false });
    expect([done.status, done.json.imported, done.json.routes[0].outcome]).toEqual([200, 1, "imported"]);
    const [shop] = await listAllRoutes(t.database);
    expect([shop!.id, shop!.owner, shop!.updatedAt.toISOString()]).toEqual(["rt-0123456789abcdef", "user-1", "2026-03-06T13:05:00.000Z"]);
    expect((await post({ routes: [row("rt-0123456789abcdef", "shop")] })).json.routes[0].outcome).toBe("already_here");
  });

  it("needs a key, and an operator's: a key verified per user only sees that user's routes", async () => {
    expect(await post({ routes: [] }, {})).toMatchObject({ status: 401, json: { error: "missing api key" } });
    const scoped = testApp(t.database, fakePlatform().platform, [], { auth: { authenticate: async () => ({ userId: "user-1", scoped: true, key: "user-key" }) } });
    expect(await post({ routes: [] }, { authorization: "Bearer user-key" }, scoped)).toMatchObject({
      status: 403,
      json: { error: "importing routes needs an operator key (one of HATCH_API_KEYS), not a user's key" },
    });
    const get = await app.request("/admin/import-hatch", { headers: { authorization: `Bearer ${KEY}` } });
    expect([get.status, get.headers.get("allow")]).toEqual([405, "POST"]);
  });

  it("answers 400 naming the field of a body that is not Hatch's rows", async () => {
    const cases: [unknown, string][] = [
      [[], 'request body must be a JSON object: {"dry_run": false, "routes": [...]}'],
      [{}, "routes is missing"],
      [{ routes: "x" }, "routes must be an array of Hatch's route rows"],
      [{ routes: [], extra: 1 }, 'unknown field "extra"'],
      [{ routes: [row("rt-3333333333333333", "x", { target_port: "80" })] }, "routes.0.target_port must be a number"],
      [{ routes: [row("rt-3333333333333333", "x", { updated_at: "yesterday" })] }, "routes.0.updated_at must be an ISO 8601 timestamp"],
      [{ routes: [{ ...row("rt-3333333333333333", "x"), vm_id: undefined }] }, "routes.0.vm_id is missing"],
      [{ routes: [], dry_run: "yes" }, "dry_run must be true or false"],
    ];
    for (const [body, error] of cases) expect(await post(body), JSON.stringify(body)).toMatchObject({ status: 400, json: { error } });
  });
});
