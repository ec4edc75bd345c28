import type { AddressInfo } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { serve, type ServerType } from "@hono/node-server";
import { testConfig, type Config } from "../src/config.ts";
import { openDatabase, type Database } from "../src/db/client.ts";
import { deleteRoute, insertRoute, listAllRoutes } from "../src/db/routes.repo.ts";
import { sql } from "drizzle-orm";
import { routesFingerprint, rowFingerprint } from "../src/traefik/routes-fingerprint.ts";
import { silentLogger } from "../src/log.ts";
import { createConfigService, type ConfigService } from "../src/traefik/config-service.ts";
import { traefikEndpoint } from "../src/traefik/endpoint.ts";
import type { VmDirectory } from "../src/vms/platform.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";

/** A Database whose queries throw while `broken` is set (the raw handle stays usable for writes). */
function breakable(database: Database) {
  const state = { broken: false };
  const db = new Proxy(database.db, {
    get(target, prop, receiver) {
      if (state.broken) throw new Error("connection terminated: password=hunter2 at 10.9.9.9");
      return Reflect.get(target, prop, receiver);
    },
  });
  return { state, database: { ...database, db } as Database };
}

const route = (vmId: string, subdomain: string, id = `rt_${subdomain.replace(/-/g, "")}`) => ({ id, vmId, subdomain, targetPort: 8080 });
const loopback = () => "127.0.0.1";

const started: ConfigService[] = [];
async function startService(database: Database, directory: VmDirectory, config: Config, resyncMs = 60_000) {
  const service = createConfigService({ database, directory, config, log: silentLogger, resyncMs });
  started.push(service);
  await service.start();
  return service;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.stop()));
});

describe.each(await dbKinds())("traefik endpoint on %s", (kind) => {
  let t: TestDb;
  beforeAll(async () => {
    t = await freshDb(kind);
  });
  afterAll(async () => {
    await t.drop();
  });

  it("answers 503 with the reason before any config was built, then 200", async () => {
    const dir = fakeDirectory({ ready: false });
    const service = await startService(t.database, dir, testConfig());
    const app = traefikEndpoint(service, { config: testConfig(), log: silentLogger, clientAddress: loopback });
    const res = await app.request("/config");
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("1");
    expect(await res.json()).toEqual({ error: "traefik config not built yet: VM states not loaded yet" });
    dir.markReady();
    await expect.poll(async () => (await app.request("/config")).status).toBe(200);
  });

  it("builds once the directory is ready even when that fires no change event (empty platform)", async () => {
    const dir = fakeDirectory({ ready: false });
    const service = await startService(t.database, dir, testConfig());
    expect(service.current()).toBeUndefined();
    dir.markReady(true);
    await expect.poll(() => service.current()?.routers, { timeout: 1000, interval: 20 }).toBe(3); // hatch-api, hatch-streams, hatch-wake
  });

  it("answers 503 when the database fails before the first build, without the driver's message", async () => {
    const b = breakable(t.database);
    b.state.broken = true;
    const service = await startService(b.database, fakeDirectory(), testConfig());
    const app = traefikEndpoint(service, { config: testConfig(), log: silentLogger, clientAddress: loopback });
    const res = await app.request("/config");
    expect(res.status).toBe(503);
    expect(await res.text()).toBe('{"error":"traefik config not built yet: database unavailable"}');
    expect(service.health()).toEqual({ ready: false, lastError: "database unavailable", lastSuccessAt: undefined });
    b.state.broken = false;
    await service.refresh();
    expect((await app.request("/config")).status).toBe(200);
  });

  it("serves the routers of running VMs and follows route and state changes", async () => {
    const dir = fakeDirectory({ vms: [{ id: "vm_follow", state: "running", guest_ip: "127.0.1.7" }] });
    const service = await startService(t.database, dir, testConfig());
    const app = traefikEndpoint(service, { config: testConfig(), log: silentLogger, clientAddress: loopback });
    const routers = async () => Object.keys(((await (await app.request("/config")).json()) as any).http.routers).sort();
    expect(await routers()).toEqual(["hatch-api", "hatch-streams", "hatch-wake"]);

    await insertRoute(t.database, route("vm_follow", "follow-me"));
    await expect.poll(routers).toEqual(["hatch-api", "hatch-streams", "hatch-wake", "rt_followme", "rt_followme-get"]);
    const res = await app.request("/config");
    expect(res.headers.get("content-type")).toBe("application/json");
    const body = (await res.json()) as any;
    expect(body.http.routers.rt_followme).toEqual({ entryPoints: ["web"], middlewares: ["hatch-vm-retry"], rule: "Host(`follow-me.hatch.local`)", service: "rt_followme" });
    expect(body.http.services.rt_followme).toEqual({ loadBalancer: { passHostHeader: true, servers: [{ url: "http://127.0.1.7:8080" }], serversTransport: "hatch-vm" } });

    dir.set("vm_follow", "snapshotted");
    await expect.poll(routers).toEqual(["hatch-api", "hatch-streams", "hatch-wake"]);
    dir.set("vm_follow", "running", "127.0.1.8");
    await expect.poll(routers).toEqual(["hatch-api", "hatch-streams", "hatch-wake", "rt_followme", "rt_followme-get"]);
    await deleteRoute(t.database, "rt_followme");
    await expect.poll(routers).toEqual(["hatch-api", "hatch-streams", "hatch-wake"]);
  });

  it("keeps serving the last good config while the database fails, and recovers", async () => {
    const b = breakable(t.database);
    const dir = fakeDirectory({ vms: [{ id: "vm_lg", state: "running", guest_ip: "127.0.1.5" }] });
    await insertRoute(t.database, route("vm_lg", "last-good"));
    const service = await startService(b.database, dir, testConfig());
    const app = traefikEndpoint(service, { config: testConfig(), log: silentLogger, clientAddress: loopback });
    const before = await app.request("/config");
    expect(before.status).toBe(200);
    const good = await before.text();
    expect(good).toContain("rt_lastgood");

    b.state.broken = true;
    await insertRoute(t.database, route("vm_lg", "after-break"));
    await service.refresh();
    expect(service.health().lastError).toBe("database unavailable");
    const during = await app.request("/config");
    expect(during.status).toBe(200);
    expect(await during.text()).toBe(good);
    expect(during.headers.get("etag")).toBe(before.headers.get("etag"));

    // VM states still apply to the last good routes: a sleeping VM must lose its direct router.
    dir.set("vm_lg", "snapshotted");
    await expect.poll(async () => (await (await app.request("/config")).text()).includes("rt_lastgood")).toBe(false);
    dir.set("vm_lg", "running", "127.0.1.5");
    await expect.poll(async () => await (await app.request("/config")).text()).toBe(good);

    b.state.broken = false;
    await service.refresh();
    expect(service.health().lastError).toBeUndefined();
    expect(await (await app.request("/config")).text()).toContain("rt_afterbreak");
    await deleteRoute(t.database, "rt_lastgood");
    await deleteRoute(t.database, "rt_afterbreak");
  });

  it("computes the same routes fingerprint in SQL and in JS", async () => {
    await insertRoute(t.database, { id: "rt_fp1", vmId: "vm_fp", subdomain: "fp-one", targetPort: 65535 });
    await insertRoute(t.database, { id: "rt_fp2", vmId: "vm_fp2", subdomain: "fp-two", targetPort: 1 });
    const rows = await listAllRoutes(t.database);
    const js = rows.reduce((n, r) => n + rowFingerprint(r), 0);
    expect(await routesFingerprint(t.database)).toEqual({ count: rows.length, sum: js });
    expect(rows.length).toBeGreaterThanOrEqual(2);
    await deleteRoute(t.database, "rt_fp1");
    await deleteRoute(t.database, "rt_fp2");
  });

  it("heals a lost notification at the periodic check, and re-reads nothing while nothing changed", async () => {
    let selects = 0;
    const counted = {
      ...t.database,
      db: new Proxy(t.database.db, {
        get(target, prop, receiver) {
          if (prop === "select") selects++;
          return Reflect.get(target, prop, receiver);
        },
      }),
      // No LISTEN: every change is "lost", only the periodic check can find it.
      listen: async () => async () => {},
    } as Database;
    const dir = fakeDirectory({ vms: [{ id: "vm_lost", state: "running", guest_ip: "127.0.1.6" }] });
    const service = await startService(counted, dir, testConfig(), 50);
    expect(selects).toBe(1);
    await new Promise((r) => setTimeout(r, 400));
    // Several checks ran (one aggregate query each) without a full re-read.
    expect(selects).toBe(1);
    await t.database.db.execute(sql`insert into routes (id, vm_id, subdomain, target_port) values ('rt_lost', 'vm_lost', 'lost-notify', 8080)`);
    await expect.poll(() => service.current()!.json.includes("rt_lost"), { timeout: 2000, interval: 20 }).toBe(true);
    expect(selects).toBe(2);
    await deleteRoute(t.database, "rt_lost");
    await expect.poll(() => service.current()!.json.includes("rt_lost"), { timeout: 2000, interval: 20 }).toBe(false);
  });

  // Registered on the Postgres pass only (PGlite is one process): nothing is reported as skipped.
  if (kind === "postgres")
  it("converges two instances on one Postgres within 1 s of a write", async () => {
    const second = await openDatabase({ url: t.url! });
    try {
      const vms = [{ id: "vm_conv", state: "running" as const, guest_ip: "127.0.1.3" }];
      // Resync is 60 s: only LISTEN/NOTIFY can explain convergence within a second.
      const a = await startService(t.database, fakeDirectory({ vms }), testConfig());
      const b = await startService(second, fakeDirectory({ vms }), testConfig());
      expect(a.current()!.json).toBe(b.current()!.json);
      const appA = traefikEndpoint(a, { config: testConfig(), log: silentLogger, clientAddress: loopback });
      const appB = traefikEndpoint(b, { config: testConfig(), log: silentLogger, clientAddress: loopback });

      const t0 = Date.now();
      await insertRoute(t.database, route("vm_conv", "converge"));
      await expect.poll(() => b.current()!.json.includes("rt_converge"), { timeout: 1000, interval: 20 }).toBe(true);
      await expect.poll(() => a.current()!.json.includes("rt_converge"), { timeout: 1000, interval: 20 }).toBe(true);
      expect(Date.now() - t0).toBeLessThan(1000);
      const [ra, rb] = await Promise.all([appA.request("/config"), appB.request("/config")]);
      expect(await ra.text()).toBe(await rb.text());
      expect(ra.headers.get("etag")).toBe(rb.headers.get("etag"));

      await deleteRoute(second, "rt_converge");
      await expect.poll(() => a.current()!.json.includes("rt_converge"), { timeout: 1000, interval: 20 }).toBe(false);
      await expect.poll(() => b.current()!.json, { timeout: 1000, interval: 20 }).toBe(a.current()!.json);
    } finally {
      await second.close();
    }
  });
});

describe("traefik endpoint HTTP behaviour", () => {
  let t: TestDb;
  let service: ConfigService;
  beforeAll(async () => {
    t = await freshDb("pglite");
    await insertRoute(t.database, route("vm_h", "hello"));
    const dir = fakeDirectory({ vms: [{ id: "vm_h", state: "running", guest_ip: "127.0.1.2" }] });
    service = createConfigService({ database: t.database, directory: dir, config: testConfig({ wakeSecret: "wake-s3cret" }), log: silentLogger });
    await service.start();
  });
  afterAll(async () => {
    await service.stop();
    await t.drop();
  });

  describe("with a token", () => {
    const config = testConfig({ traefikToken: "tok-123" });
    const app = () => traefikEndpoint(service, { config, log: silentLogger, clientAddress: () => "203.0.113.9" });

    it.each([
      [undefined, "missing bearer token"],
      ["Bearer wrong", "invalid bearer token"],
      ["Bearer tok-1234", "invalid bearer token"],
      ["Basic dG9rLTEyMw==", "invalid bearer token"],
      ["tok-123", "invalid bearer token"],
    ])("refuses Authorization %s with 401", async (auth, error) => {
      for (const path of ["/config", "/config.yaml"]) {
        const res = await app().request(path, { headers: auth ? { authorization: auth } : {} });
        expect(res.status).toBe(401);
        expect(res.headers.get("www-authenticate")).toMatch(/^Bearer /);
        const text = await res.text();
        expect(text).toBe(JSON.stringify({ error }));
      }
    });

    it("serves any client with the right token", async () => {
      const res = await app().request("/config", { headers: { authorization: "Bearer tok-123" } });
      expect(res.status).toBe(200);
      const text = await res.text();
      expect(text).toBe(service.current()!.json);
      expect(JSON.parse(text).http.middlewares["hatch-wake-auth"].headers.customRequestHeaders).toEqual({ "X-Hatch-Wake-Secret": "wake-s3cret" });
    });
  });

  describe("without a token (loopback only)", () => {
    const config = testConfig({ traefikToken: undefined });
    const appFrom = (address: string | undefined) => traefikEndpoint(service, { config, log: silentLogger, clientAddress: () => address });
    const forbidden = { error: "the traefik config is served to loopback clients only (set HATCH_TRAEFIK_TOKEN to allow others)" };

    it.each(["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])("serves loopback client %s", async (address) => {
      const res = await appFrom(address).request("/config");
      expect(res.status).toBe(200);
      expect(await res.text()).toBe(service.current()!.json);
    });

    it.each(["10.0.0.5", "203.0.113.9", "::ffff:10.0.0.1", "fe80::1", "128.0.0.1", undefined])("refuses %s with 403 and no secret", async (address) => {
      for (const path of ["/config", "/config.yaml"]) {
        const res = await appFrom(address).request(path);
        expect(res.status).toBe(403);
        const text = await res.text();
        expect(JSON.parse(text)).toEqual(forbidden);
        expect(text).not.toContain("wake-s3cret");
      }
    });

    it("refuses a request relayed by a proxy on loopback (e.g. Traefik's api router)", async () => {
      for (const h of ["x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host"]) {
        const res = await appFrom("127.0.0.1").request("/config", { headers: { [h]: "203.0.113.9" } });
        expect(res.status).toBe(403);
        expect(await res.json()).toEqual(forbidden);
      }
    });

    it("treats an in-process request without a socket as not loopback (default address source)", async () => {
      const res = await traefikEndpoint(service, { config, log: silentLogger }).request("/config");
      expect(res.status).toBe(403);
    });

    it("serves a real loopback socket with the default address source", async () => {
      const server: ServerType = await new Promise((resolve) => {
        const s = serve({ fetch: traefikEndpoint(service, { config, log: silentLogger }).fetch, hostname: "127.0.0.1", port: 0 }, () => resolve(s));
      });
      try {
        const { port } = server.address() as AddressInfo;
        const res = await fetch(`http://127.0.0.1:${port}/config`);
        expect(res.status).toBe(200);
        expect(await res.text()).toBe(service.current()!.json);
      } finally {
        await new Promise((r) => server.close(r));
      }
    });
  });

  describe("ETag", () => {
    const app = () => traefikEndpoint(service, { config: testConfig(), log: silentLogger, clientAddress: loopback });

    it.each(["/config", "/config.yaml"])("answers If-None-Match on %s with 304", async (path) => {
      const first = await app().request(path);
      expect(first.status).toBe(200);
      const etag = first.headers.get("etag")!;
      expect(etag).toMatch(/^"[A-Za-z0-9_-]{43}"$/);
      expect(first.headers.get("cache-control")).toBe("private, no-cache");
      for (const inm of [etag, `W/${etag}`, `"other", ${etag}`, "*"]) {
        const again = await app().request(path, { headers: { "if-none-match": inm } });
        expect(again.status).toBe(304);
        expect(await again.text()).toBe("");
        expect(again.headers.get("etag")).toBe(etag);
      }
      const stale = await app().request(path, { headers: { "if-none-match": '"not-it"' } });
      expect(stale.status).toBe(200);
      expect(await stale.text()).toBe(await first.clone().text());
    });

    it("gives the YAML form the same document with its own ETag", async () => {
      const res = await app().request("/config.yaml");
      expect(res.headers.get("content-type")).toBe("application/yaml; charset=utf-8");
      const { parse } = await import("yaml");
      expect(parse(await res.text())).toEqual(JSON.parse(service.current()!.json));
      expect(res.headers.get("etag")).not.toBe(service.current()!.etag);
    });
  });
});
