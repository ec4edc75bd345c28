/**
 * Every tenant on a key-scoped Hatch, through a real Traefik and PostgreSQL: the simulator runs in a
 * process of its own with HATCH_SIM_USERS (alice, bob and the product's own user, ops), keys are
 * verified by a better-auth endpoint, and hatch-proxy holds ops's key as HATCH_API_KEY. Each user's
 * routes survive the VM sync, serve, wake after a sleep made on the platform, are put to sleep by
 * the idle sweeper and woken by a request; users stay isolated; nothing of a key leaks.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../src/log.ts";
import type { Stack } from "../src/stack.ts";
import { postgresEnabled, traefikBinary } from "./helpers/env.ts";
import { startSimulator, waitFor } from "./helpers/front.ts";
import { stackConfig, stackDatabase, stackPorts, startSleepStack } from "./helpers/stack.ts";
import { startTestTraefik, traefikPorts, viaEntry, type TestTraefik } from "./helpers/traefik.ts";
import { startVerifier, type TestVerifier } from "./helpers/verifier.ts";

const pg = await postgresEnabled();
const bin = traefikBinary();
if (!pg || !bin) console.warn(`[tenancy-traefik] ${!pg ? "no PostgreSQL" : "no Traefik binary"}: the multi-tenant suite is SKIPPED`);

const KEYS = { alice: "alice-key-7c1e93b05d2a", bob: "bob-key-41f0a8d6e29c", ops: "ops-key-b83d5e17c06f" } as const;
type User = keyof typeof KEYS;
const SECOND_ALICE_KEY = "alice-key-second-2f6b0e94";
const ALL_KEYS = [...Object.values(KEYS), SECOND_ALICE_KEY];

describe.runIf(pg && bin)("every tenant on a key-scoped Hatch, through a real Traefik", () => {
  const dir = mkdtempSync(join(tmpdir(), "hatch-tenancy-"));
  const logs: string[] = [];
  let verifier: TestVerifier;
  let sim: Awaited<ReturnType<typeof startSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  let stack: Stack;
  let traefik: TestTraefik;
  let createdAt = 0;
  const vms = {} as Record<User, string>;
  const routes = {} as Record<User, { id: string; subdomain: string }>;

  const platform = (user: User, method: string, path: string) =>
    fetch(sim.url + path, { method, headers: { authorization: `Bearer ${KEYS[user]}` } }).then(async (r) => ({ status: r.status, json: (await r.json()) as any }));
  const ours = (key: string, method: string, path: string, body?: unknown) =>
    fetch(stack.api!.url + path, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body !== undefined && { "content-type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(async (r) => ({ status: r.status, json: (await r.json()) as any }));
  // A 307 back to the same URL (the sleep fallback) counts as answered once followed.
  const front = (user: User, path = "/") => viaEntry(traefik.entryPort, `${routes[user].subdomain}.hatch.local`, path, { follow307: true, timeoutMs: 20_000 });

  beforeAll(async () => {
    verifier = await startVerifier(Object.entries(KEYS).map(([u, k]) => [k, u]));
    sim = await startSimulator("127.0.160", dir, join(dir, "sim"), {
      // Alice has a second key on Hatch; hatch-proxy's verifier hears of it only later (uncached).
      HATCH_SIM_USERS: [...Object.entries(KEYS).map(([u, k]) => `${k}:${u}`), `${SECOND_ALICE_KEY}:alice`].join(","),
      HATCH_SIM_RESTORE_MS: "200",
    });
    db = await stackDatabase("postgres");
    const ports = await stackPorts();
    const tports = await traefikPorts();
    const config = stackConfig(ports, {
      ...db.overrides,
      hatchApiUrl: sim.url,
      hatchApiKey: KEYS.ops,
      apiKeys: undefined,
      authVerifyUrl: verifier.url,
      credentialsKey: randomBytes(32),
      wakeSecret: "tenancy-secret",
      traefikApiUrls: [tports.apiUrl],
      idleTimeoutMs: 5000,
      idleCheckIntervalMs: 1000,
    });
    stack = await startSleepStack(config, "traefik", { settleMs: 400 }, createLogger("debug", {}, (line) => logs.push(line)));
    traefik = await startTestTraefik(bin!, { providerUrl: `${stack.api!.url}/traefik/config`, ...tports });
  }, 90_000);

  afterAll(async () => {
    await traefik?.stop();
    await stack?.close();
    await sim?.stop();
    await verifier?.close();
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("each user makes a VM on Hatch and a route here; every route serves, and Traefik routes each running VM directly", async () => {
    for (const user of Object.keys(KEYS) as User[]) {
      const created = await platform(user, "POST", "/vms");
      expect(created.status).toBe(201);
      vms[user] = created.json.id;
      const route = await ours(KEYS[user], "POST", `/vms/${vms[user]}/routes`, { subdomain: `${user}-app`, target_port: 8080 });
      expect(route.status, JSON.stringify(route.json)).toBe(201);
      routes[user] = route.json;
    }
    createdAt = Date.now();
    for (const user of Object.keys(KEYS) as User[]) {
      const r = await front(user, `/hello?who=${user}`);
      expect([r.status, JSON.parse(r.body).vm_id]).toEqual([200, vms[user]]);
      // A direct router exists only for a VM the sync follows as running: each user's VM is followed.
      await traefik.waitForRouter(routes[user].id);
    }
  }, 60_000);

  it("each user sees only their own routes and VMs: bob gets 404 for anything of alice's", async () => {
    const id = routes.alice.id;
    const vm = vms.alice;
    for (const [method, path] of [
      ["GET", `/routes/${id}`],
      ["DELETE", `/routes/${id}`],
      ["GET", `/vms/${vm}/routes`],
      ["POST", `/vms/${vm}/routes`],
      ["GET", `/vms/${vm}/activity`],
      ["POST", `/vms/${vm}/sleep`],
      ["GET", `/vms/${vm}`],
      ["POST", `/vms/${vm}/snapshot`],
    ] as const) {
      const r = await ours(KEYS.bob, method, path, method === "POST" && path.endsWith("/routes") ? { target_port: 8080 } : undefined);
      expect([method, path, r.status, r.json.error]).toEqual([method, path, 404, "not found"]);
    }
    const bobsList = await ours(KEYS.bob, "GET", "/vms");
    expect(bobsList.json.map((v: { id: string }) => v.id)).toEqual([vms.bob]);
    expect((await ours(KEYS.alice, "GET", `/routes/${id}`)).status).toBe(200);
    const activity = await ours(KEYS.alice, "GET", `/vms/${vm}/activity`);
    expect(activity.json.platform_access).toEqual({ status: "ok", detail: null });
  });

  it("the idle sweeper puts each user's idle VM to sleep, and a request wakes it", async () => {
    const asleep = async (user: User) => (await platform(user, "GET", `/vms/${vms[user]}`)).json.state === "snapshotted";
    for (const user of Object.keys(KEYS) as User[]) await waitFor(() => asleep(user), `${user}'s VM put to sleep by the sweeper`, 30_000, 200);
    // The platform shows `snapshotted` before its answer reaches the sweeper, which logs the sleep after that answer.
    const idleSleepLogged = (user: User) =>
      logs.some((l) => l.includes('"msg":"vm sleep"') && l.includes('"reason":"idle"') && l.includes('"outcome":"done"') && l.includes(vms[user]));
    for (const user of Object.keys(KEYS) as User[]) await waitFor(() => idleSleepLogged(user), `idle sleep of ${user}'s VM logged`, 5_000, 50);
    for (const user of Object.keys(KEYS) as User[]) {
      const r = await front(user);
      expect([user, r.status, JSON.parse(r.body).vm_id]).toEqual([user, 200, vms[user]]);
    }
  }, 60_000);

  it("after a sleep made on the platform with each owner's own key, each user's route wakes its VM", async () => {
    for (const user of Object.keys(KEYS) as User[]) {
      // The sweeper may have put it to sleep again meanwhile: only a running VM can be snapshotted.
      if ((await platform(user, "GET", `/vms/${vms[user]}`)).json.state !== "running") expect((await front(user)).status).toBe(200);
      const snap = await platform(user, "POST", `/vms/${vms[user]}/snapshot`);
      expect([user, snap.status]).toEqual([user, 201]);
    }
    for (const user of Object.keys(KEYS) as User[]) {
      const r = await front(user, `/after-platform-sleep`);
      expect([user, r.status, JSON.parse(r.body).vm_id]).toEqual([user, 200, vms[user]]);
      expect((await platform(user, "GET", `/vms/${vms[user]}`)).json.state).toBe("running");
    }
  }, 60_000);

  it("30 concurrent requests with one uncached key make one verifier call", async () => {
    verifier.users.set(SECOND_ALICE_KEY, "alice");
    verifier.holdMs = 500;
    const before = verifier.calls;
    const answers = await Promise.all(Array.from({ length: 30 }, () => ours(SECOND_ALICE_KEY, "GET", `/vms/${vms.alice}/routes`)));
    verifier.holdMs = 0;
    expect(answers.map((a) => a.status)).toEqual(Array(30).fill(200));
    expect(verifier.calls - before).toBe(1);
  });

  it("nothing of a user's key reaches the logs, /traefik/config or the database in the clear", async () => {
    const config = await (await fetch(`${stack.api!.url}/traefik/config`)).text();
    const sql = postgres(db.overrides.databaseUrl!, { max: 1, onnotice: () => {} });
    try {
      const tables = await sql<{ name: string }[]>`select table_schema || '.' || table_name as name from information_schema.tables where table_schema in ('public', 'drizzle')`;
      let dump = "";
      for (const t of tables) dump += JSON.stringify(await sql.unsafe(`select * from ${t.name}`)) + "\n";
      expect(dump).toContain('"owner":"alice"');
      const kept = await sql<{ owner: string; sealed: string }[]>`select owner, sealed from owner_credentials order by owner`;
      expect(kept.map((k) => k.owner)).toEqual(["alice", "bob", "ops"]);
      for (const key of ALL_KEYS) {
        for (const [where, text] of [
          ["the logs", logs.join("\n")],
          ["/traefik/config", config],
          ["the database", dump],
        ] as const) {
          expect(text.includes(key), `${key.slice(0, 8)}… in ${where}`).toBe(false);
          // Not base64-encoded either.
          expect(text.includes(Buffer.from(key).toString("base64").slice(0, 16)), `${key.slice(0, 8)}… base64 in ${where}`).toBe(false);
        }
      }
    } finally {
      await sql.end({ timeout: 2 });
    }
  });

  it("each user's routes are still there 60 s after they were made, and no route was ever removed", async () => {
    const wait = createdAt + 60_000 - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    for (const user of Object.keys(KEYS) as User[]) {
      const r = await ours(KEYS[user], "GET", `/routes/${routes[user].id}`);
      expect([user, r.status]).toEqual([user, 200]);
      expect((await front(user)).status).toBe(200);
    }
    expect(logs.filter((l) => l.includes("routes of a deleted VM removed") || l.includes("vm no longer exists"))).toEqual([]);
  }, 90_000);
});
