/** The wake proxy over real sockets: simulated VMs with real guest servers, PGlite and Postgres. */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { testConfig, type Config } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { PlatformUnavailableError, WakeError, type VmPlatform } from "../src/vms/platform.ts";
import { createVmDirectory } from "../src/vms/directory.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer, type WakeProxy } from "../src/wake/proxy.ts";
import { createRouteCache } from "../src/wake/resolve.ts";
import type { Database } from "../src/db/client.ts";
import { routes } from "../src/db/schema.ts";
import { eq } from "drizzle-orm";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call, EMPTY_SHA, sha256 } from "./helpers/wake-fixture.ts";

const BASE = "hatch.local";

describe.each(await dbKinds())("wake proxy on %s", (kind) => {
  let t: TestDb;
  let sim: Simulator;
  const stops: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    t = await freshDb(kind);
    sim = await createSimulator({ ipPrefix: kind === "pglite" ? "127.77.1" : "127.77.2", restoreMs: 150 });
  });
  afterAll(async () => {
    for (const s of stops.reverse()) await s();
    await sim.close();
    await t.drop();
  });

  /** A proxy (own directory, own server) over the shared simulator and database. */
  async function proxyWith(overrides: Partial<Config> = {}, embedded = true) {
    const config = testConfig({ baseDomain: BASE, wakePageAfterMs: 0, ...overrides });
    const directory = fakeDirectory({ platform: sim.platform });
    const counted = { wakeCalls: 0 };
    const platform: VmPlatform = { ...sim.platform, kind: "simulator", wake: (id, o) => ((counted.wakeCalls += 1), sim.platform.wake(id, o)) };
    const proxy = createWakeProxy({ config, database: t.database, platform, directory, log: silentLogger }, { embedded });
    const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
    stops.push(async () => {
      await proxy.close();
      await server.close();
    });
    return { proxy, server, directory, counted, url: server.url };
  }

  async function metric(proxy: WakeProxy, name: string): Promise<number> {
    const text = await proxy.registry.metrics();
    const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{") && l.split(" ")[0] === name);
    return line ? Number(line.split(" ").pop()) : NaN;
  }

  it("route cache: fresh hits skip the database, expired ones are served while one re-read runs, a route write clears it", async () => {
    let clock = 1_000;
    // A cache that hears no notifications (as if they were lost) shows what the TTL alone does.
    const deaf: Database = { ...t.database, listen: async () => async () => {} };
    const lossy = createRouteCache(deaf, { ttlMs: 1000, log: silentLogger, now: () => clock });
    const listening = createRouteCache(t.database, { ttlMs: 60_000, log: silentLogger, now: () => clock });
    try {
      const route = await addRoute(t.database, "vm_cache_1");
      const moveTo = (vmId: string) => t.database.db.update(routes).set({ vmId }).where(eq(routes.id, route.id));
      expect((await lossy.get(route.subdomain))?.vmId).toBe("vm_cache_1");
      await moveTo("vm_cache_2");
      expect((await lossy.get(route.subdomain))?.vmId).toBe("vm_cache_1");
      clock += 1001;
      expect((await lossy.get(route.subdomain))?.vmId).toBe("vm_cache_1");
      await expect.poll(async () => (await lossy.get(route.subdomain))?.vmId).toBe("vm_cache_2");
      // Every write to routes is announced (a trigger): a listening cache drops its entry at once.
      expect((await listening.get(route.subdomain))?.vmId).toBe("vm_cache_2");
      await moveTo("vm_cache_3");
      await expect.poll(async () => (await listening.get(route.subdomain))?.vmId).toBe("vm_cache_3");
      expect(await listening.get("no-such-name")).toBeUndefined();
    } finally {
      await Promise.all([lossy.close(), listening.close()]);
    }
  });

  describe("answers that are not the VM's", () => {
    let p: Awaited<ReturnType<typeof proxyWith>>;
    beforeAll(async () => {
      p = await proxyWith();
    });

    it("400 for a Host outside the base domain, and for the bare base domain", async () => {
      const r1 = await call(p.url, { host: "example.com" });
      expect([r1.status, r1.json()]).toEqual([400, { error: 'host "example.com" is not under the base domain "hatch.local"' }]);
      expect(r1.headers["content-type"]).toBe("application/json");
      const r2 = await call(p.url, { host: "hatch.local:9090" });
      expect([r2.status, r2.json()]).toEqual([400, { error: "no subdomain in host header" }]);
    });

    it("404 for an unknown subdomain, and the route works once created (cache cleared by NOTIFY)", async () => {
      const vm = await sim.createVm();
      const r = await call(p.url, { host: "nobody-here.hatch.local" });
      expect([r.status, r.json()]).toEqual([404, { error: 'no route for subdomain "nobody-here"' }]);
      await addRoute(t.database, vm.id, { subdomain: "nobody-here" });
      await expect.poll(async () => (await call(p.url, { host: "nobody-here.hatch.local" })).status, { timeout: 1500, interval: 50 }).toBe(200);
    });

    it("502 vm not found when the route's VM is gone", async () => {
      const route = await addRoute(t.database, "vm_does_not_exist");
      const r = await call(p.url, { host: `${route.subdomain}.${BASE}` });
      expect([r.status, r.json()]).toEqual([502, { error: "vm not found" }]);
    });

    it("503 naming the real state when auto_wake is off (snapshotted, stopped), and for other states", async () => {
      const a = await sim.createVm();
      const b = await sim.createVm();
      const c = await sim.createVm();
      await sim.snapshot(a.id);
      await sim.stop(b.id);
      const ra = await addRoute(t.database, a.id, { autoWake: false });
      const rb = await addRoute(t.database, b.id, { autoWake: false });
      const rc = await addRoute(t.database, c.id);
      const x = await call(p.url, { host: `${ra.subdomain}.${BASE}` });
      expect([x.status, x.json()]).toEqual([503, { error: "vm is snapshotted and auto-wake is disabled" }]);
      const y = await call(p.url, { host: `${rb.subdomain}.${BASE}` });
      expect([y.status, y.json()]).toEqual([503, { error: "vm is stopped and auto-wake is disabled" }]);
      p.directory.record({ ...c, state: "error" });
      const z = await call(p.url, { host: `${rc.subdomain}.${BASE}` });
      expect([z.status, z.json()]).toEqual([503, { error: 'vm is in state "error", not proxying' }]);
      expect(sim.getVm(a.id)!.wake_count).toBe(0);
      expect(sim.getVm(b.id)!.wake_count).toBe(0);
    });

    it("502 naming the port when a really running VM refuses the connection", async () => {
      const vm = await sim.createVm();
      const route = await addRoute(t.database, vm.id, { port: 9 });
      const r = await call(p.url, { host: `${route.subdomain}.${BASE}` });
      expect([r.status, r.json()]).toEqual([502, { error: "vm port 9 refused the connection" }]);
    });
  });

  describe("running VM", () => {
    let p: Awaited<ReturnType<typeof proxyWith>>;
    let host: string;
    let vmId: string;
    beforeAll(async () => {
      p = await proxyWith();
      const vm = await sim.createVm();
      vmId = vm.id;
      host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
    });

    it("passes a GET through: Host kept, X-Forwarded-* set, hop-by-hop headers dropped", async () => {
      const r = await call(p.url, {
        host: host.toUpperCase() + ":9090",
        path: "/a/b?x=1&y=two",
        headers: {
          connection: "keep-alive, x-drop-me",
          "x-drop-me": "1",
          "keep-alive": "timeout=5",
          te: "trailers",
          "proxy-authorization": "Basic eA==",
          "x-forwarded-for": "203.0.113.9",
          "x-forwarded-proto": "https",
          "x-keep": "yes",
        },
      });
      expect(r.status).toBe(200);
      const echo = r.json();
      expect(echo).toMatchObject({ vm_id: vmId, method: "GET", path: "/a/b", query: { x: "1", y: "two" }, body_length: 0 });
      expect(echo.headers.host).toBe(host.toUpperCase() + ":9090");
      expect(echo.headers["x-keep"]).toBe("yes");
      for (const h of ["x-drop-me", "keep-alive", "te", "proxy-authorization", "transfer-encoding", "upgrade"]) expect(echo.headers[h]).toBeUndefined();
      // Embedded mode: nothing in front is trusted, so the client's X-Forwarded-* are replaced.
      expect(echo.headers["x-forwarded-for"]).toBe("127.0.0.1");
      expect(echo.headers["x-forwarded-proto"]).toBe("http");
      expect(echo.headers["x-forwarded-host"]).toBe(host.toUpperCase() + ":9090");
      expect(r.headers["server-timing"]).toBeUndefined();
      expect(r.headers["x-hatch-cold-start"]).toBeUndefined();
    });

    it("streams a POST body both ways intact (Content-Length and chunked)", async () => {
      const body = randomBytes(1024 * 1024 + 7);
      const a = await call(p.url, { host, method: "POST", path: "/upload", body });
      expect(a.status).toBe(200);
      expect(a.json()).toMatchObject({ method: "POST", body_length: body.length, body_sha256: sha256(body) });
      const b = await call(p.url, { host, method: "PUT", body, chunked: 16 * 1024 });
      expect(b.json()).toMatchObject({ method: "PUT", body_length: body.length, body_sha256: sha256(body) });
      expect(b.json().headers["transfer-encoding"]).toBe("chunked");
    });

    it("HEAD gets the head only; a deleted route is gone at once (NOTIFY clears the cache)", async () => {
      const head = await call(p.url, { host, method: "HEAD" });
      expect(head.status).toBe(200);
      expect(head.text).toBe("");
      expect(Number(head.headers["content-length"])).toBeGreaterThan(0);
      const vm = await sim.createVm();
      const route = await addRoute(t.database, vm.id);
      const h = `${route.subdomain}.${BASE}`;
      expect((await call(p.url, { host: h })).status).toBe(200);
      const { deleteRoute } = await import("../src/db/routes.repo.ts");
      await deleteRoute(t.database, route.id);
      await expect.poll(async () => (await call(p.url, { host: h })).status, { timeout: 1500, interval: 50 }).toBe(404);
    });

    it("relays the VM's own error statuses unchanged", async () => {
      const r = await call(p.url, { host, path: "/status/500" });
      expect(r.status).toBe(500);
      expect(r.json()).toMatchObject({ vm_id: vmId, path: "/status/500" });
      const n = await call(p.url, { host, path: "/status/404" });
      expect(n.status).toBe(404);
    });

    it("flushes a chunked stream as it comes (first chunk long before the last)", async () => {
      const { request } = await import("node:http");
      const times: number[] = [];
      const t0 = Date.now();
      const lines = await new Promise<string[]>((resolve, reject) => {
        request(new URL("/stream?n=4&ms=250", p.url), { headers: { host }, agent: false }, (res) => {
          let buf = "";
          res.on("data", (c: Buffer) => {
            times.push(Date.now() - t0);
            buf += c.toString();
          });
          res.on("end", () => resolve(buf.trim().split("\n")));
        })
          .on("error", reject)
          .end();
      });
      expect(lines.map((l) => JSON.parse(l).chunk)).toEqual([0, 1, 2, 3]);
      // Chunks 250 ms apart: the first must not wait for the second (or for the end).
      expect(times[0]!).toBeLessThan(240);
      expect(times.at(-1)!).toBeGreaterThanOrEqual(720);
    });

    it("504 when the VM does not answer in time", async () => {
      const q = await proxyWith({ wakeTimeoutMs: 300 });
      const t0 = Date.now();
      const r = await call(q.url, { host, path: "/sleep?ms=3000" });
      expect([r.status, r.json()]).toEqual([504, { error: "vm did not answer within 300ms (HATCH_PROXY_WAKE_TIMEOUT)" }]);
      expect(Date.now() - t0).toBeLessThan(1000);
    });

    it("pipes a WebSocket at once", async () => {
      const echoed = await wsEcho(p.url, host, "hello");
      expect(echoed).toBe("hello");
    });

    it("sidecar mode: the wake secret is required, compared, and never forwarded", async () => {
      const q = await proxyWith({ wakeSecret: "s3cret" }, false);
      const none = await call(q.url, { host });
      expect([none.status, none.json()]).toEqual([403, { error: "missing or invalid X-Hatch-Wake-Secret header" }]);
      const wrong = await call(q.url, { host, headers: { "x-hatch-wake-secret": "s3cre" } });
      expect(wrong.status).toBe(403);
      const ok = await call(q.url, { host, headers: { "x-hatch-wake-secret": "s3cret", "x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https" } });
      expect(ok.status).toBe(200);
      const echo = ok.json();
      expect(echo.headers["x-hatch-wake-secret"]).toBeUndefined();
      // Behind Traefik the forwarded headers are trusted and appended to.
      expect(echo.headers["x-forwarded-for"]).toBe("203.0.113.9, 127.0.0.1");
      expect(echo.headers["x-forwarded-proto"]).toBe("https");
      // Embedded mode never asks for the secret.
      const e = await proxyWith({ wakeSecret: "s3cret" }, true);
      expect((await call(e.url, { host })).status).toBe(200);
    });
  });

  describe("sleeping VM", () => {
    it("200 concurrent GETs and POSTs wake it exactly once; each is replayed with its own body", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm({ restore_ms: 600 });
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const bootBefore = sim.getVm(vm.id)!.boot_count;
      const refreshesBefore = p.directory.refreshes;
      const bodies = Array.from({ length: 200 }, (_, i) => (i % 2 ? randomBytes(1000 + i) : undefined));
      const replies = await Promise.all(
        bodies.map((body, i) => call(p.url, { host, method: body ? "POST" : "GET", path: `/r/${i}`, body, chunked: i % 4 === 1 ? 300 : undefined })),
      );
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
      expect(sim.getVm(vm.id)!.boot_count).toBe(bootBefore + 1);
      // One flight: one platform call and one state read under the lock, not one per request.
      expect(p.counted.wakeCalls).toBe(1);
      expect(p.directory.refreshes - refreshesBefore).toBeLessThanOrEqual(2);
      replies.forEach((r, i) => {
        expect(r.status).toBe(200);
        const echo = r.json();
        expect(echo.path).toBe(`/r/${i}`);
        expect(echo.method).toBe(bodies[i] ? "POST" : "GET");
        expect(echo.body_sha256).toBe(bodies[i] ? sha256(bodies[i]!) : EMPTY_SHA);
        // A request that arrives after the wake (a slow machine) goes straight through, unmarked.
        if (r.headers["x-hatch-cold-start"] !== undefined) expect(r.headers["server-timing"]).toMatch(/^wake;dur=\d+$/);
        else expect(r.headers["server-timing"]).toBeUndefined();
      });
      expect(replies.filter((r) => r.headers["x-hatch-cold-start"] === "1").length).toBeGreaterThan(100);
      expect(await metric(p.proxy, 'hatch_wakes_total{outcome="ok"}')).toBe(1);
      expect(await metric(p.proxy, "hatch_wake_waiters")).toBe(0);
      // The directory learned the new state at once: the next request goes straight through.
      expect(p.directory.peek(vm.id)?.state).toBe("running");
      const hot = await call(p.url, { host });
      expect(hot.headers["x-hatch-cold-start"]).toBeUndefined();
    });

    it("a stale cache (VM snapshotted behind the directory's back) still gets an answer: woken", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      expect((await call(p.url, { host })).status).toBe(200);
      expect(p.directory.peek(vm.id)?.state).toBe("running");
      await sim.snapshot(vm.id);
      const body = randomBytes(5000);
      const r = await call(p.url, { host, method: "POST", body });
      expect(r.status).toBe(200);
      expect(r.json().body_sha256).toBe(sha256(body));
      expect(r.headers["x-hatch-cold-start"]).toBe("1");
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("with the real VM directory: a VM snapshotted since its last poll is woken, and the directory knows at once", async () => {
      const config = testConfig({ baseDomain: BASE, wakePageAfterMs: 0 });
      const directory = createVmDirectory({ platform: sim.platform, intervalMs: 60_000, log: silentLogger });
      const proxy = createWakeProxy({ config, database: t.database, platform: sim.platform, directory, log: silentLogger }, { embedded: true });
      const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
      stops.push(async () => {
        await proxy.close();
        await server.close();
      });
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await directory.refreshAll();
      expect(directory.peek(vm.id)?.state).toBe("running");
      await sim.snapshot(vm.id);
      const r = await call(server.url, { host });
      expect(r.status).toBe(200);
      expect(r.headers["x-hatch-cold-start"]).toBe("1");
      expect(directory.peek(vm.id)?.state).toBe("running");
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("wakes a stopped VM through the platform's start", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.stop(vm.id);
      const r = await call(p.url, { host });
      expect(r.status).toBe(200);
      expect(sim.getVm(vm.id)!.state).toBe("running");
    });

    it("a VM already starting (woken by someone else) is waited for, not woken again", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm({ restore_ms: 400 });
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const restoring = sim.restore(vm.id);
      expect(sim.getVm(vm.id)!.state).toBe("starting");
      const r = await call(p.url, { host });
      expect(r.status).toBe(200);
      expect(r.headers["x-hatch-cold-start"]).toBe("1");
      expect(p.counted.wakeCalls).toBe(0);
      await restoring;
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("a platform that cannot start a stopped VM → 503 with its reason; an unreachable platform → 503", async () => {
      const config = testConfig({ baseDomain: BASE, wakePageAfterMs: 0 });
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.stop(vm.id);
      const noStart: VmPlatform = {
        ...sim.platform,
        kind: "hatch",
        wake: async () => {
          throw new WakeError("unsupported", "vm is stopped and this platform cannot start it");
        },
      };
      const a = createWakeProxy({ config, database: t.database, platform: noStart, directory: fakeDirectory({ platform: noStart }), log: silentLogger }, { embedded: true });
      const sa = await startWakeServer(a, { host: "127.0.0.1", port: 0 });
      const down: VmPlatform = {
        ...sim.platform,
        get: async () => {
          throw new PlatformUnavailableError("VM platform unavailable: GET /vms/x failed (ECONNREFUSED)");
        },
      };
      const b = createWakeProxy({ config, database: t.database, platform: down, directory: fakeDirectory({ platform: down }), log: silentLogger }, { embedded: true });
      const sb = await startWakeServer(b, { host: "127.0.0.1", port: 0 });
      stops.push(async () => {
        await Promise.all([a.close(), b.close()]);
        await Promise.all([sa.close(), sb.close()]);
      });
      const ra = await call(sa.url, { host });
      expect([ra.status, ra.json()]).toEqual([503, { error: "vm is stopped and this platform cannot start it" }]);
      const rb = await call(sb.url, { host });
      expect([rb.status, rb.json()]).toEqual([503, { error: "vm platform unavailable" }]);
      expect(rb.headers["retry-after"]).toBe("1");
    });

    it("a failed restore answers every waiter 503 failed to wake vm; the next request wakes it", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      sim.failNextRestores(vm.id, 1);
      const failed = await Promise.all([1, 2, 3].map(() => call(p.url, { host })));
      for (const r of failed) {
        expect(r.status).toBe(503);
        expect(r.json().error).toBe("failed to wake vm");
        expect(r.json().detail).toContain("injected failure");
      }
      expect(await metric(p.proxy, 'hatch_wakes_total{outcome="failed"}')).toBe(1);
      const ok = await call(p.url, { host });
      expect(ok.status).toBe(200);
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("a restore slower than the timeout → 504 in time, then nothing is left held", async () => {
      const p = await proxyWith({ wakeTimeoutMs: 400 });
      const vm = await sim.createVm({ restore_ms: 2500 });
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const t0 = Date.now();
      const replies = await Promise.all([1, 2].map(() => call(p.url, { host })));
      const took = Date.now() - t0;
      for (const r of replies) {
        expect([r.status, r.json()]).toEqual([504, { error: "vm did not become ready within 400ms (HATCH_PROXY_WAKE_TIMEOUT)" }]);
        expect(r.headers["server-timing"]).toMatch(/^wake;dur=\d+$/);
      }
      expect(took).toBeGreaterThanOrEqual(390);
      // Far below the 2.5 s restore: the timeout, not the restore, ended the wait.
      expect(took).toBeLessThan(1500);
      expect(await metric(p.proxy, 'hatch_wakes_total{outcome="timeout"}')).toBe(1);
      expect(await metric(p.proxy, "hatch_wake_waiters")).toBe(0);
      // The wake's own timers are gone too: the next request, after the VM came up, is served.
      await expect.poll(() => sim.getVm(vm.id)!.state, { timeout: 6000 }).toBe("running");
      expect((await call(p.url, { host })).status).toBe(200);
    });

    it("413 for a body over the cap (declared or counted), before anything is lost", async () => {
      const p = await proxyWith({ wakeMaxBody: 64 * 1024 });
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const msg = { error: "request body exceeds 64 KiB, the most held while a VM wakes (HATCH_WAKE_MAX_BODY)" };
      const declared = await call(p.url, { host, method: "POST", body: randomBytes(64 * 1024 + 1) });
      expect([declared.status, declared.json()]).toEqual([413, msg]);
      const chunked = await call(p.url, { host, method: "POST", body: randomBytes(200 * 1024), chunked: 8 * 1024 });
      expect([chunked.status, chunked.json()]).toEqual([413, msg]);
      const fits = randomBytes(64 * 1024);
      const ok = await call(p.url, { host, method: "POST", body: fits });
      expect(ok.status).toBe(200);
      expect(ok.json().body_sha256).toBe(sha256(fits));
    });

    it("503 with Retry-After past the waiter cap; the held ones are served", async () => {
      const p = await proxyWith({ wakeMaxWaiters: 3 });
      const vm = await sim.createVm({ restore_ms: 400 });
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const replies = await Promise.all(Array.from({ length: 5 }, () => call(p.url, { host })));
      const statuses = replies.map((r) => r.status).sort();
      expect(statuses).toEqual([200, 200, 200, 503, 503]);
      const refused = replies.find((r) => r.status === 503)!;
      expect(refused.json()).toEqual({ error: `too many requests waiting for vm ${vm.id} to wake (HATCH_WAKE_MAX_WAITERS=3)` });
      expect(refused.headers["retry-after"]).toBe("2");
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("a client that leaves while waiting is dropped; the wake goes on for the others", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm({ restore_ms: 400 });
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const ac = new AbortController();
      // The first request (the one that started the wake) leaves.
      const leaver = call(p.url, { host, path: "/leaver", signal: ac.signal }).catch((e: Error) => e.name);
      await expect.poll(() => metric(p.proxy, "hatch_wake_waiters"), { interval: 10 }).toBe(1);
      const stayers = [1, 2].map((i) => call(p.url, { host, path: `/stay/${i}` }));
      await expect.poll(() => metric(p.proxy, "hatch_wake_waiters"), { interval: 10 }).toBe(3);
      ac.abort();
      expect(await leaver).toBe("AbortError");
      await expect.poll(() => metric(p.proxy, "hatch_wake_waiters"), { interval: 10 }).toBe(2);
      const done = await Promise.all(stayers);
      expect(done.map((r) => [r.status, r.json().path])).toEqual([
        [200, "/stay/1"],
        [200, "/stay/2"],
      ]);
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("a WebSocket upgrade wakes the VM, then echoes", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      expect(await wsEcho(p.url, host, "after the wake")).toBe("after the wake");
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("two routes on two ports of one VM share one wake; the second port is probed on its own", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm({ guest_ports: [8080, 8081], restore_ms: 200 });
      const a = `${(await addRoute(t.database, vm.id, { port: 8080 })).subdomain}.${BASE}`;
      const b = `${(await addRoute(t.database, vm.id, { port: 8081 })).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => call(p.url, { host: i % 2 ? b : a })));
      expect(replies.map((r) => [r.status, r.json().port])).toEqual(Array.from({ length: 10 }, (_, i) => [200, i % 2 ? 8081 : 8080]));
      expect(p.counted.wakeCalls).toBe(1);
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("errors before an upgrade are plain HTTP answers on the socket", async () => {
      const p = await proxyWith();
      const status = await new Promise<number>((resolve, reject) => {
        const ws = new WebSocket(p.url.replace(/^http/, "ws") + "/ws", { headers: { host: `no-such-route.${BASE}` } });
        ws.on("unexpected-response", (_req, res) => {
          let text = "";
          res.on("data", (c: Buffer) => (text += c));
          res.on("end", () => {
            expect(JSON.parse(text)).toEqual({ error: 'no route for subdomain "no-such-route"' });
            resolve(res.statusCode!);
          });
        });
        ws.on("open", () => reject(new Error("opened")));
        ws.on("error", () => {});
      });
      expect(status).toBe(404);
    });

    it("a WebSocket to a VM that slept behind the directory's back is woken too", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm();
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      expect(await wsEcho(p.url, host, "one")).toBe("one");
      await sim.snapshot(vm.id);
      expect(await wsEcho(p.url, host, "two")).toBe("two");
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("a browser gets the waking page after the threshold, and its refresh reaches the VM; API clients are held", async () => {
      const p = await proxyWith({ wakePageAfterMs: 100 });
      const vm = await sim.createVm({ restore_ms: 1200 });
      const route = await addRoute(t.database, vm.id, { subdomain: `page-${randomBytes(3).toString("hex")}` });
      const host = `${route.subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const browser = { accept: "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8" };
      const api = call(p.url, { host, headers: { accept: "application/json" } });
      const t0 = Date.now();
      const page = await call(p.url, { host, headers: browser });
      expect(Date.now() - t0).toBeLessThan(900);
      expect(page.status).toBe(503);
      expect(page.headers["content-type"]).toBe("text/html; charset=utf-8");
      expect(page.headers["retry-after"]).toBe("1");
      // Reloaded by the page's script: a Refresh to the same URL never refetches one with a #fragment.
      expect(page.headers["refresh"]).toBeUndefined();
      expect(page.headers["cache-control"]).toBe("no-store");
      expect(page.text).toContain(`waking ${route.subdomain}…`);
      expect((await api).status).toBe(200);
      const reload = await call(p.url, { host, headers: browser });
      expect(reload.status).toBe(200);
      expect(reload.json().vm_id).toBe(vm.id);
      expect(sim.getVm(vm.id)!.wake_count).toBe(1);
    });

    it("close() answers held requests 503 at once", async () => {
      const p = await proxyWith();
      const vm = await sim.createVm({ restore_ms: 2000 });
      const host = `${(await addRoute(t.database, vm.id)).subdomain}.${BASE}`;
      await sim.snapshot(vm.id);
      const held = call(p.url, { host });
      await expect.poll(() => metric(p.proxy, "hatch_wake_waiters"), { interval: 10 }).toBe(1);
      const t0 = Date.now();
      await p.proxy.close();
      const r = await held;
      expect([r.status, r.json()]).toEqual([503, { error: "proxy is shutting down" }]);
      expect(Date.now() - t0).toBeLessThan(1000);
    });
  });
});

/** Opens a WebSocket through the proxy to the guest's /ws echo and returns the echoed text. */
function wsEcho(baseUrl: string, host: string, text: string): Promise<string> {
  const url = baseUrl.replace(/^http/, "ws") + "/ws";
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { host } });
    ws.on("open", () => ws.send(text));
    ws.on("message", (data) => {
      resolve(data.toString());
      ws.close();
    });
    ws.on("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    ws.on("error", reject);
  });
}
