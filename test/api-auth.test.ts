import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createApp } from "../src/api/app.ts";
import { createStaticKeyAuth, createVerifyAuth } from "../src/api/auth.ts";
import { testConfig } from "../src/config.ts";
import { createLogger, silentLogger } from "../src/log.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakePlatform, fakeDirectory, vm } from "./helpers/fakes.ts";

describe("static keys", () => {
  it("accepts plain and sha256: keys and refuses others", async () => {
    const hashed = createHash("sha256").update("hashed-secret").digest("hex");
    const auth = createStaticKeyAuth(["plain-secret", `sha256:${hashed}`]);
    await expect(auth.authenticate({ authorization: "Bearer plain-secret" })).resolves.toMatchObject({ userId: "", scoped: false });
    await expect(auth.authenticate({ apiKey: "hashed-secret" })).resolves.toMatchObject({ scoped: false });
    await expect(auth.authenticate({ authorization: `Bearer sha256:${hashed}` })).rejects.toThrow("invalid api key");
    await expect(auth.authenticate({ authorization: "Bearer plain-secretX" })).rejects.toThrow("invalid api key");
    await expect(auth.authenticate({ authorization: "bearer   plain-secret" })).resolves.toMatchObject({ scoped: false });
    await expect(auth.authenticate({ authorization: "Bearer" })).rejects.toThrow("invalid authorization header");
    await expect(auth.authenticate({})).rejects.toThrow("missing api key");
  });
});

describe("better-auth verification and per-user scoping", () => {
  let verify: Server;
  let verifyUrl: string;
  let verifyCalls = 0;
  let t: TestDb;
  let app: ReturnType<typeof createApp>;
  const logs: string[] = [];
  const users: Record<string, string> = { "alice-key": "user_alice", "bob-key": "user_bob" };

  beforeAll(async () => {
    verify = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        verifyCalls++;
        const { key } = JSON.parse(body);
        if (key === "boom-key") return res.writeHead(500).end("oops");
        const userId = users[key];
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(userId ? { valid: true, userId } : { valid: false }));
      });
    });
    await new Promise<void>((r) => verify.listen(0, "127.0.0.1", r));
    verifyUrl = `http://127.0.0.1:${(verify.address() as AddressInfo).port}/verify`;
    t = await freshDb("pglite");
    const fake = fakePlatform();
    fake.add(vm("vm_alice"), "alice-key");
    fake.add(vm("vm_bob"), "bob-key");
    app = createApp({
      config: testConfig(),
      database: t.database,
      platform: fake.platform,
      directory: fakeDirectory(),
      auth: createVerifyAuth({ url: verifyUrl, cacheTtlMs: 60_000 }),
      log: createLogger("debug", {}, (l) => logs.push(l)),
    });
  });
  afterAll(async () => {
    await t.drop();
    verify.close();
  });

  const as = (key: string) => ({ Authorization: `Bearer ${key}`, "Content-Type": "application/json" });

  it("verifies keys with the verify URL and caches positive answers", async () => {
    const before = verifyCalls;
    expect((await app.request("/vms/vm_alice/routes", { headers: as("alice-key") })).status).toBe(200);
    expect((await app.request("/vms/vm_alice/routes", { headers: as("alice-key") })).status).toBe(200);
    expect(verifyCalls - before).toBe(1);
    const bad = await app.request("/vms/vm_alice/routes", { headers: as("nobody-key") });
    expect(bad.status).toBe(401);
    expect((await bad.json()).error).toBe("invalid api key");
    const boom = await app.request("/vms/vm_alice/routes", { headers: as("boom-key") });
    expect(boom.status).toBe(401);
  });

  it("scopes VMs and routes to their user: another user's is 404", async () => {
    const created = await app.request("/vms/vm_alice/routes", { method: "POST", headers: as("alice-key"), body: JSON.stringify({ subdomain: "alice", target_port: 80 }) });
    expect(created.status).toBe(201);
    const route = await created.json();
    // Bob cannot see Alice's VM, nor read or delete her route.
    for (const res of [
      await app.request("/vms/vm_alice/routes", { headers: as("bob-key") }),
      await app.request("/vms/vm_alice/routes", { method: "POST", headers: as("bob-key"), body: JSON.stringify({ target_port: 80 }) }),
      await app.request(`/routes/${route.id}`, { headers: as("bob-key") }),
      await app.request(`/routes/${route.id}`, { method: "DELETE", headers: as("bob-key") }),
    ]) {
      expect(res.status).toBe(404);
      expect((await res.json()).error).toBe("not found");
    }
    expect(await (await app.request(`/routes/${route.id}`, { headers: as("alice-key") })).json()).toEqual(route);
  });

  it("answers 503 when the verifier is unreachable, and never logs a key", async () => {
    const down = createVerifyAuth({ url: "http://127.0.0.1:1/verify", timeoutMs: 500 });
    await expect(down.authenticate({ authorization: "Bearer alice-key" })).rejects.toMatchObject({ status: 503, message: "authentication service unavailable" });
    expect(logs.length).toBeGreaterThan(0);
    for (const line of logs) for (const key of Object.keys(users)) expect(line).not.toContain(key);
  });
});

describe("the verifier's hygiene", () => {
  /** A verifier whose answers the test controls: `hold` delays them, `valid` is the set of good keys. */
  async function verifier() {
    const state = { calls: 0, holdMs: 0, valid: new Set(["k-alice"]), down: false };
    const server = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        state.calls++;
        const { key } = JSON.parse(body) as { key: string };
        setTimeout(() => {
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(state.valid.has(key) ? { valid: true, userId: "alice" } : { valid: false }));
        }, state.holdMs);
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return { state, server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/verify` };
  }

  it("30 concurrent requests with one uncached key make one verifier call, and all get its answer", async () => {
    const v = await verifier();
    v.state.holdMs = 300;
    const auth = createVerifyAuth({ url: v.url });
    const results = await Promise.all(Array.from({ length: 30 }, () => auth.authenticate({ authorization: "Bearer k-alice" })));
    expect(results.every((p) => p.userId === "alice")).toBe(true);
    expect(v.state.calls).toBe(1);
    const bad = await Promise.allSettled(Array.from({ length: 30 }, () => auth.authenticate({ authorization: "Bearer k-mallory" })));
    expect(bad.every((r) => r.status === "rejected" && (r.reason as Error).message === "invalid api key")).toBe(true);
    expect(v.state.calls).toBe(2);
    v.server.close();
  });

  it("a revoked key stops working once its cached answer is older than the cache lifetime (0: at once)", async () => {
    const v = await verifier();
    let now = 1_000_000;
    const auth = createVerifyAuth({ url: v.url, cacheTtlMs: 10_000, now: () => now });
    await auth.authenticate({ authorization: "Bearer k-alice" });
    v.state.valid.delete("k-alice");
    now += 9_999;
    await expect(auth.authenticate({ authorization: "Bearer k-alice" })).resolves.toMatchObject({ userId: "alice" });
    now += 2;
    await expect(auth.authenticate({ authorization: "Bearer k-alice" })).rejects.toThrow("invalid api key");

    v.state.valid.add("k-alice");
    const uncached = createVerifyAuth({ url: v.url, cacheTtlMs: 0 });
    await uncached.authenticate({ authorization: "Bearer k-alice" });
    v.state.valid.delete("k-alice");
    await expect(uncached.authenticate({ authorization: "Bearer k-alice" })).rejects.toThrow("invalid api key");
    v.server.close();
  });

  it("/readyz names the verifier while it cannot be reached, and is ready again once it answers", async () => {
    const v = await verifier();
    const port = (v.server.address() as AddressInfo).port;
    let now = 5_000_000;
    const auth = createVerifyAuth({ url: v.url, timeoutMs: 300, now: () => now });
    expect(await auth.readiness()).toBeUndefined();
    await new Promise<void>((r) => v.server.close(() => r()));
    // A real call fails first: /readyz says so at once, without waiting for a probe.
    await expect(auth.authenticate({ authorization: "Bearer k-other" })).rejects.toMatchObject({ status: 503 });
    expect(await auth.readiness()).toBe("key verifier (HATCH_BETTER_AUTH_VERIFY_URL) unreachable: ECONNREFUSED");
    now += 10_000;
    expect(await auth.readiness()).toMatch(/^key verifier \(HATCH_BETTER_AUTH_VERIFY_URL\) unreachable/);
    const back = createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end('{"valid":false}'));
    await new Promise<void>((r) => back.listen(port, "127.0.0.1", r));
    now += 10_000;
    expect(await auth.readiness()).toBeUndefined();
    back.close();
  });
});

describe("open endpoints", () => {
  it("leaves /healthz open while route endpoints need a key", async () => {
    const t = await freshDb("pglite");
    const app = createApp({ config: testConfig(), database: t.database, platform: fakePlatform().platform, directory: fakeDirectory(), auth: createStaticKeyAuth(["k"]), log: silentLogger });
    expect((await app.request("/healthz")).status).toBe(200);
    expect((await app.request("/vms/x/routes")).status).toBe(401);
    await t.drop();
  });
});
