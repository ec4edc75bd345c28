/**
 * The README's "Moving from Hatch's built-in proxy", walked in order as an operator would, on a
 * stand-in for a Hatch installation with two users: Hatch's API (the simulator scoping every call to
 * its key's user, as Hatch does), Hatch's PostgreSQL database with routes in its `proxy_routes` table,
 * and a better-auth verify endpoint. Every variable and command the guide names is taken from the guide itself, so the guide
 * and the product cannot drift apart unnoticed.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ENV_VARS, parseDuration } from "../src/config.ts";
import type { Stack } from "../src/stack.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { postgresEnabled, traefikBinary } from "./helpers/env.ts";
import { runCli } from "./helpers/cli.ts";
import { waitFor } from "./helpers/front.ts";
import { hatchDatabase } from "./helpers/hatch-db.ts";
import { stackConfig, stackPorts, standaloneSimulator, startSleepStack } from "./helpers/stack.ts";
import { startTestTraefik, traefikPorts, viaEntry, type TestTraefik } from "./helpers/traefik.ts";
import { startVerifier, type TestVerifier } from "./helpers/verifier.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const README = readFileSync(join(ROOT, "README.md"), "utf8");

/** The guide's numbered steps, by the bold title each starts with. */
function guideSteps(): Map<string, string> {
  const start = README.indexOf("\n## Moving from Hatch's built-in proxy\n");
  if (start < 0) throw new Error("README has no \"Moving from Hatch's built-in proxy\" section");
  const end = README.indexOf("\n## ", start + 1);
  const text = README.slice(start, end < 0 ? undefined : end);
  const steps = new Map<string, string>();
  for (const m of text.matchAll(/\n\d+\. \*\*([^*]+)\*\*([\s\S]*?)(?=\n\d+\. \*\*|$)/g)) steps.set(m[1]!.replace(/[:.]$/, ""), m[2]!);
  return steps;
}

/** The step whose title matches, or a failure naming the titles there are. */
function step(steps: Map<string, string>, title: RegExp): string {
  for (const [t, body] of steps) if (title.test(t)) return body;
  throw new Error(`no step titled ${title} in the guide (titles: ${[...steps.keys()].join(" | ")})`);
}

/** `NAME=value` assignments written in a step, in backquotes. */
const assignments = (text: string) => new Map([...text.matchAll(/`(HATCH_[A-Z_]+)=([^`\s]+)`/g)].map((m) => [m[1]!, m[2]!]));

/** Runs the CLI as a person would; its exit code and output. */
const cli = (args: string[], env: Record<string, string>) => runCli(args, { env: { HATCH_LOG_LEVEL: "warn", ...env } });

/** A request to `host` on Traefik's public entry point (as wildcard DNS would send it). */
const viaFront = (port: number, host: string, path: string, headers: Record<string, string> = {}) => viaEntry(port, host, path, { headers });

const pg = await postgresEnabled();
const bin = traefikBinary();
if (!pg || !bin) console.warn(`[migration-guide] ${!pg ? "no PostgreSQL" : "no Traefik binary"}: the walk of the migration guide is SKIPPED`);

describe.runIf(pg && bin)("the README's migration guide, walked on a stand-in Hatch", () => {
  const steps = guideSteps();
  const KEY = "alice-key-0c4f2a9e";
  const BOB_KEY = "bob-key-7d1e5b30";
  const OPS_KEY = "ops-key-95a3c6f1";
  const USERS = new Map([
    [KEY, "user_alice"],
    [BOB_KEY, "user_bob"],
    [OPS_KEY, "user_ops"],
  ]);
  const BASE = "hatch.local";
  let hatch: Awaited<ReturnType<typeof hatchDatabase>>;
  let target: TestDb;
  let sim: Awaited<ReturnType<typeof standaloneSimulator>>;
  let verify: TestVerifier;
  let verifyUrl: string;
  let stack: Stack | undefined;
  let traefik: TestTraefik | undefined;
  let shop: string;
  let blog: string;
  let wiki: string;
  let hatchRoutesBefore: unknown;

  beforeAll(async () => {
    // Hatch: its API with two VMs of user_alice (one asleep) and one of user_bob, its database with their routes.
    sim = await standaloneSimulator("127.0.98", 200, USERS);
    const auth = { authorization: `Bearer ${KEY}` };
    shop = (await (await fetch(`${sim.url}/vms`, { method: "POST", headers: auth })).json()).id;
    blog = (await (await fetch(`${sim.url}/vms`, { method: "POST", headers: auth })).json()).id;
    wiki = (await (await fetch(`${sim.url}/vms`, { method: "POST", headers: { authorization: `Bearer ${BOB_KEY}` } })).json()).id;
    expect((await fetch(`${sim.url}/vms/${blog}/snapshot`, { method: "POST", headers: auth })).ok).toBe(true);
    hatch = await hatchDatabase();
    await hatch.sql`insert into vms (id, image_id, vcpu_count, mem_mib, user_id) values (${shop}, 'img_default', 1, 256, 'user_alice'), (${blog}, 'img_default', 1, 256, 'user_alice'), (${wiki}, 'img_default', 1, 256, 'user_bob')`;
    await hatch.sql.unsafe(`insert into proxy_routes (id, vm_id, subdomain, target_port, auto_wake, created_at, updated_at) values
      ('rt-00000000000000a1', '${shop}', 'shop', 8080, true, '2026-03-06T13:00:00Z', '2026-03-06T13:05:00Z'),
      ('rt-00000000000000b2', '${blog}', 'blog', 8080, true, '2026-03-07T10:00:00Z', '2026-03-07T10:00:00Z'),
      ('rt-00000000000000c3', '${shop}', 'api', 8080, true, '2026-03-08T00:00:00Z', '2026-03-08T00:00:00Z'),
      ('rt-00000000000000d4', '${wiki}', 'wiki', 8080, true, '2026-03-09T00:00:00Z', '2026-03-09T00:00:00Z')`);
    hatchRoutesBefore = await hatch.sql`select * from proxy_routes order by id`;
    // Hatch's better-auth verify endpoint: the same key, the same user.
    verify = await startVerifier(USERS);
    verifyUrl = verify.url;
    target = await freshDb("postgres");
    await target.database.close();
  }, 60_000);

  afterAll(async () => {
    await traefik?.stop();
    await stack?.close();
    await sim?.close();
    await verify?.close();
    await hatch?.close();
    await target?.drop();
  });

  it("1–4: every setting the guide names is one of ours or hatchd's, with values that do what it says", async () => {
    const run = step(steps, /^Run hatch-proxy beside hatchd/);
    for (const name of ["HATCH_API_URL", "HATCH_BETTER_AUTH_VERIFY_URL", "HATCH_CREDENTIALS_KEY", "HATCH_API_KEY", "HATCH_PROXY_BASE_DOMAIN", "HATCH_HTTP_ADDR", "HATCH_TRAEFIK_PLATFORM_URL"]) {
      expect(run, `step 1 names ${name}`).toContain(`\`${name}\``);
      expect(ENV_VARS, `${name} is a setting of hatch-proxy`).toHaveProperty(name);
    }
    // hatchd's proxy off the public port: a loopback address.
    const moved = assignments(step(steps, /^Move hatchd's proxy off the public port/));
    expect(moved.get("HATCH_PROXY_ADDR")).toMatch(/^127\.0\.0\.1:\d+$/);
    // Hatch's idle monitor: a timeout no VM reaches, checked rarely (both Go durations, as hatchd reads them).
    const idle = assignments(step(steps, /^Turn Hatch's own idle monitor off/));
    expect(parseDuration(idle.get("HATCH_IDLE_TIMEOUT")!)).toBeGreaterThanOrEqual(50 * 365 * 24 * 3600_000);
    expect(parseDuration(idle.get("HATCH_IDLE_CHECK_INTERVAL")!)).toBeGreaterThanOrEqual(3600_000);
    // TLS: the entry point and resolver the guide sets give every router one wildcard certificate.
    const tls = step(steps, /^Wildcard DNS and TLS/);
    const entry = /`HATCH_TRAEFIK_ENTRYPOINTS=([a-z]+)`/.exec(tls)?.[1];
    expect(entry, "step 4 sets HATCH_TRAEFIK_ENTRYPOINTS").toBeDefined();
    expect(tls).toContain("`HATCH_TRAEFIK_CERT_RESOLVER=");
    // The operator key, made the way step 1 says.
    expect(run).toContain("`openssl rand -hex 32`");
    expect(run).toMatch(/`HATCH_API_KEY` = a key of a Hatch user of hatch-proxy's\s+own, not a tenant's/);
    const printed = await cli(["traefik-config"], {
      DATABASE_URL: target.url!,
      HATCH_API_URL: sim.url,
      HATCH_API_KEY: OPS_KEY,
      HATCH_PROXY_BASE_DOMAIN: BASE,
      HATCH_TRAEFIK_ENTRYPOINTS: entry!,
      HATCH_TRAEFIK_CERT_RESOLVER: "dns01",
    });
    expect(printed.code, printed.err).toBe(0);
    const routers = Object.values(JSON.parse(printed.out).http.routers) as { entryPoints: string[]; tls?: unknown }[];
    expect(routers.length).toBeGreaterThan(0);
    for (const r of routers) {
      expect(r.entryPoints).toEqual([entry]);
      expect(r.tls).toEqual({ certResolver: "dns01", domains: [{ main: BASE, sans: [`*.${BASE}`] }] });
    }
  });

  it("1: hatch-proxy runs beside hatchd with the settings of step 1, Traefik in front", async () => {
    const tports = await traefikPorts();
    const ports = await stackPorts();
    stack = await startSleepStack(
      stackConfig(ports, {
        databaseUrl: target.url,
        hatchApiUrl: sim.url,
        hatchApiKey: OPS_KEY,
        credentialsKey: randomBytes(32),
        traefikPlatformUrl: sim.url,
        authVerifyUrl: verifyUrl,
        apiKeys: undefined,
        baseDomain: BASE,
        wakeSecret: "guide-secret",
        traefikApiUrls: [tports.apiUrl],
        idleTimeoutMs: 0,
      }),
      "traefik",
    );
    traefik = await startTestTraefik(bin!, { providerUrl: `${stack.api!.url}/traefik/config`, ...tports });
    await traefik.waitForRouter("hatch-vm-api");
  }, 60_000);

  it("5: the import, dry run first, then for real, then again (nothing twice); Hatch's database untouched", async () => {
    const importStep = step(steps, /^Import the routes/);
    const command = /`(hatch-proxy import-hatch --from (\S+) --dry-run)`/.exec(importStep);
    expect(command, "step 5 gives the dry-run command").not.toBeNull();
    const args = command![1]!.replace(command![2]!, hatch.db.url!).split(" ").slice(1);
    const exitAllHere = Number(/Exit (\d) = every route is here/.exec(importStep)?.[1]);
    const exitSomeNot = Number(/(\d) = some were not/.exec(importStep)?.[1]);
    const env = { DATABASE_URL: target.url! };
    const ours = async () => (await (await fetch(`${stack!.api!.url}/vms/${shop}/routes`, { headers: { authorization: `Bearer ${KEY}` } })).json()) as { id: string }[];

    const dry = await cli(args, env);
    expect([dry.code, dry.err]).toEqual([exitSomeNot, ""]);
    expect(dry.out).toContain("would import  rt-00000000000000a1  shop");
    expect(dry.out).toContain('not imported  rt-00000000000000c3  api → ' + shop + ':8080: subdomain "api" is reserved');
    expect(await ours()).toEqual([]);

    const real = await cli(args.filter((a) => a !== "--dry-run"), env);
    expect(real.code, real.out + real.err).toBe(exitSomeNot);
    expect(real.out).toContain("4 routes in Hatch: 3 imported, 0 already here, 1 not imported");
    const again = await cli(args.filter((a) => a !== "--dry-run"), env);
    expect(again.out).toContain("4 routes in Hatch: 0 imported, 3 already here, 1 not imported");
    expect(exitAllHere).toBe(0);

    expect(await hatch.sql`select * from proxy_routes order by id`).toEqual(hatchRoutesBefore);
  });

  it("6: the checks of the guide pass: healthz counts, the CLI lists the imported routes, the apps answer (a sleeping one wakes), activity, readyz", async () => {
    const checks = step(steps, /^Check it worked/);
    const port = traefik!.entryPort;
    // Before its owner calls hatch-proxy with their key, an imported route's VM cannot be acted on: a 503 that says so.
    expect(step(steps, /^Import the routes/)).toMatch(/503 `hatch-proxy holds\s+no key for this vm/);
    const dark = await viaFront(port, `wiki.${BASE}`, "/");
    expect([dark.status, JSON.parse(dark.body).error]).toEqual([503, expect.stringMatching(/^hatch-proxy holds no key for this vm: .*has not called hatch-proxy's API with their key/)]);
    // `curl -H "Authorization: Bearer $KEY" https://api.<base>/healthz`
    const health = /`curl -H "Authorization: Bearer \$KEY" https:\/\/api\.<base>(\/\S+)`/.exec(checks);
    expect(health, "step 6 gives the healthz check").not.toBeNull();
    const h = await viaFront(port, `api.${BASE}`, health![1]!, { authorization: `Bearer ${KEY}` });
    expect([h.status, JSON.parse(h.body)]).toEqual([200, expect.objectContaining({ status: "ok", vm_count: 2, route_count: 2 })]);

    // `hatch-proxy routes list <vm>`
    const list = /`(hatch-proxy routes list) <vm>`/.exec(checks);
    expect(list, "step 6 gives the CLI check").not.toBeNull();
    const listed = await cli([...list![1]!.split(" ").slice(1), shop], { HATCH_PROXY_URL: stack!.api!.url, HATCH_PROXY_API_KEY: KEY });
    expect(listed.code, listed.err).toBe(0);
    expect(listed.out).toContain("rt-00000000000000a1");
    expect(listed.out).toContain("shop");

    // `https://<subdomain>.<base>/` reaches the app, and wakes a sleeping VM.
    expect(checks).toContain("`https://<subdomain>.<base>/`");
    await waitFor(async () => (await fetch(`${traefik!.apiUrl}/api/http/routers/rt-00000000000000a1@http`)).status === 200, "shop's direct router");
    const app = await viaFront(port, `shop.${BASE}`, "/hello");
    expect([app.status, JSON.parse(app.body).vm_id]).toEqual([200, shop]);
    const woken = await viaFront(port, `blog.${BASE}`, "/woken");
    expect([woken.status, JSON.parse(woken.body).vm_id]).toEqual([200, blog]);
    expect(sim.sim.getVm(blog)!.state).toBe("running");

    // Bob does the same with his key: his route serves too, and neither sees the other's.
    expect(checks).toContain("as each user, with their own key");
    const bobs = await cli([...list![1]!.split(" ").slice(1), wiki], { HATCH_PROXY_URL: stack!.api!.url, HATCH_PROXY_API_KEY: BOB_KEY });
    expect([bobs.code, bobs.out]).toEqual([0, expect.stringContaining("rt-00000000000000d4")]);
    const wikiApp = await viaFront(port, `wiki.${BASE}`, "/");
    expect([wikiApp.status, JSON.parse(wikiApp.body).vm_id]).toEqual([200, wiki]);
    const theirs = await cli([...list![1]!.split(" ").slice(1), shop], { HATCH_PROXY_URL: stack!.api!.url, HATCH_PROXY_API_KEY: BOB_KEY });
    expect(theirs.code).toBe(1);

    // `GET /vms/{id}/activity` and `/readyz`.
    expect(checks).toContain("`GET /vms/{id}/activity`");
    const activity = await viaFront(port, `api.${BASE}`, `/vms/${blog}/activity`, { authorization: `Bearer ${KEY}` });
    expect(activity.status).toBe(200);
    expect(JSON.parse(activity.body)).toMatchObject({ vm_id: blog, state: "running", last_activity_at: expect.any(String), platform_access: { status: "ok" } });
    expect(checks).toContain("`/readyz`");
    expect((await fetch(`${stack!.api!.url}/readyz`)).status).toBe(200);
  }, 60_000);

  it("7: rolling back needs nothing from Hatch's side: its routes are as they were", async () => {
    const rollback = step(steps, /^Rolling back/);
    expect(rollback).toMatch(/`proxy_routes` still holds the routes it had/);
    expect(await hatch.sql`select * from proxy_routes order by id`).toEqual(hatchRoutesBefore);
  });
});
