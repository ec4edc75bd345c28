/**
 * The config endpoint against a real Traefik: routers appear and disappear with routes and VM
 * states, requests reach the simulated guests, the catch-all reaches the sidecar (a stub first,
 * then the real wake sidecar), and Traefik never logs a configuration error for our payloads.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, request, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import { testConfig, type Config } from "../src/config.ts";
import { deleteRoute, insertRoute } from "../src/db/routes.repo.ts";
import { silentLogger } from "../src/log.ts";
import { createConfigService, type ConfigService } from "../src/traefik/config-service.ts";
import { traefikEndpoint } from "../src/traefik/endpoint.ts";
import { createVmDirectory } from "../src/vms/directory.ts";
import type { VmDirectory } from "../src/vms/platform.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { freePort, traefikBinary } from "./helpers/env.ts";

const bin = traefikBinary();
const BASE = "hatch.test";
const TOKEN = "poll-token-real";
const SECRET = "wake-secret-real";

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json(): any;
}

/** A GET with an explicit Host header (fetch cannot set one). */
function get(port: number, host: string, path = "/"): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, headers: { host }, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, text, json: () => JSON.parse(text) }));
    });
    req.on("error", reject);
    req.end();
  });
}

function listen(server: Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}

/** A server that answers every request with who it is, the Host it saw and the wake secret it got. */
function stub(who: string) {
  const seen: { host: string | undefined; path: string | undefined }[] = [];
  const server = createServer((req, res) => {
    seen.push({ host: req.headers.host, path: req.url });
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ who, host: req.headers.host, path: req.url, secret: req.headers["x-hatch-wake-secret"] ?? null }));
  });
  return { server, seen };
}

describe.skipIf(!bin)("real Traefik in front of the config endpoint", () => {
  let t: TestDb;
  let sim: Simulator;
  let directory: VmDirectory;
  let traefik: ChildProcess;
  let logDir: string;
  let logFile: string;
  let entryPort: number;
  let apiPort: number;
  const wakeStub = stub("wake-stub");
  const apiStub = stub("route-api");
  let endpointServer: Server;
  let active: Hono;
  const services: ConfigService[] = [];
  const cleanups: (() => Promise<unknown>)[] = [];
  /** Polls the endpoint took for a Traefik's (what pauses sleeps when no Traefik API is configured). */
  let traefikPolls = 0;

  const routerUrl = (name: string) => `http://127.0.0.1:${apiPort}/api/http/routers/${name}@http`;
  const routerStatus = async (name: string) => (await fetch(routerUrl(name))).status;
  const through = (host: string, path = "/") => get(entryPort, host, path);

  /** A config service + endpoint for `config`, made the one Traefik polls. */
  async function activate(config: Config) {
    const service = createConfigService({ database: t.database, directory, config, log: silentLogger, resyncMs: 2000 });
    services.push(service);
    await service.start();
    active = new Hono().route("/traefik", traefikEndpoint(service, { config, log: silentLogger, onPoll: () => (traefikPolls += 1) }));
    return service;
  }

  beforeAll(async () => {
    t = await freshDb("pglite");
    sim = await createSimulator({ ipPrefix: "127.0.91", restoreMs: 300 });
    directory = createVmDirectory({ platform: sim.platform, intervalMs: 200, log: silentLogger });
    await directory.refreshAll();
    directory.start();
    const wakePort = await listen(wakeStub.server);
    const routeApiPort = await listen(apiStub.server);
    const config = testConfig({
      baseDomain: BASE,
      wakeUrl: `http://127.0.0.1:${wakePort}`,
      wakeSecret: SECRET,
      traefikToken: TOKEN,
      routeApiUrl: `http://127.0.0.1:${routeApiPort}`,
    });
    await activate(config);
    endpointServer = serve({ fetch: (req, env) => active.fetch(req, env), hostname: "127.0.0.1", port: 0 }) as Server;
    await new Promise((r) => endpointServer.once("listening", r));
    const endpointPort = (endpointServer.address() as AddressInfo).port;

    entryPort = await freePort();
    apiPort = await freePort();
    logDir = mkdtempSync(join(tmpdir(), "hatch-traefik-real-"));
    logFile = join(logDir, "traefik.log");
    traefik = spawn(
      bin!,
      [
        `--entryPoints.web.address=127.0.0.1:${entryPort}`,
        `--entryPoints.traefik.address=127.0.0.1:${apiPort}`,
        "--api.insecure=true",
        "--api.dashboard=false",
        `--providers.http.endpoint=http://127.0.0.1:${endpointPort}/traefik/config`,
        `--providers.http.headers.Authorization=Bearer ${TOKEN}`,
        "--providers.http.pollInterval=500ms",
        "--providers.providersThrottleDuration=0s",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=DEBUG",
        "--log.format=json",
        `--log.filePath=${logFile}`,
      ],
      { stdio: "ignore" },
    );
    // The catch-all only exists once a payload was fetched (with the token) and applied.
    const deadline = Date.now() + 20_000;
    while ((await routerStatus("hatch-wake").catch(() => 0)) !== 200) {
      if (traefik.exitCode !== null) throw new Error(`Traefik exited with ${traefik.exitCode}: ${readFileSync(logFile, "utf8").slice(-2000)}`);
      if (Date.now() > deadline) throw new Error("Traefik did not load the config within 20 s");
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  afterAll(async () => {
    if (traefik && traefik.exitCode === null) {
      traefik.kill("SIGTERM");
      await new Promise((r) => traefik.once("exit", r));
    }
    for (const c of cleanups.reverse()) await c();
    for (const s of services) await s.stop();
    directory?.stop();
    for (const s of [endpointServer, wakeStub.server, apiStub.server]) if (s?.listening) await new Promise((r) => s.close(r));
    await sim?.close();
    await t?.drop();
    if (logDir) rmSync(logDir, { recursive: true, force: true });
  });

  it("routes a running VM's subdomain straight to its guest, then to the catch-all once it sleeps, then not at all once deleted", async () => {
    const vm = await sim.createVm({ guest_ports: [8080, 3000] });
    await directory.refreshAll();
    await insertRoute(t.database, { id: "rt_realone", vmId: vm.id, subdomain: "web-one", targetPort: 3000 });
    await expect.poll(() => routerStatus("rt_realone"), { timeout: 5000, interval: 50 }).toBe(200);
    const router = await (await fetch(routerUrl("rt_realone"))).json();
    expect(router).toMatchObject({ rule: `Host(\`web-one.${BASE}\`)`, service: "rt_realone", status: "enabled", entryPoints: ["web"] });

    const stubHits = wakeStub.seen.length;
    const direct = await through(`web-one.${BASE}`, "/hello?x=1");
    expect(direct.status).toBe(200);
    const echo = direct.json();
    expect([echo.vm_id, echo.port, echo.path, echo.query]).toEqual([vm.id, 3000, "/hello", { x: "1" }]);
    expect(echo.headers.host).toBe(`web-one.${BASE}`);
    // Direct routes carry no wake secret (the middleware sits on the catch-all only).
    expect(echo.headers["x-hatch-wake-secret"]).toBeUndefined();
    expect(wakeStub.seen.length).toBe(stubHits);

    await sim.snapshot(vm.id);
    await expect.poll(() => routerStatus("rt_realone"), { timeout: 5000, interval: 50 }).toBe(404);
    const asleep = await through(`web-one.${BASE}`, "/hello");
    expect([asleep.status, asleep.json()]).toEqual([200, { who: "wake-stub", host: `web-one.${BASE}`, path: "/hello", secret: SECRET }]);

    await sim.restore(vm.id);
    await expect.poll(() => routerStatus("rt_realone"), { timeout: 5000, interval: 50 }).toBe(200);
    expect((await through(`web-one.${BASE}`)).json().vm_id).toBe(vm.id);

    await deleteRoute(t.database, "rt_realone");
    await expect.poll(() => routerStatus("rt_realone"), { timeout: 5000, interval: 50 }).toBe(404);
    const deleted = await through(`web-one.${BASE}`, "/gone");
    expect([deleted.status, deleted.json()]).toEqual([200, { who: "wake-stub", host: `web-one.${BASE}`, path: "/gone", secret: SECRET }]);
  });

  it("sends api.<base> to the route API, except the provider path, and other domains nowhere", async () => {
    const api = await through(`api.${BASE}`, "/vms/vm_x/routes");
    expect([api.status, api.json()]).toEqual([200, { who: "route-api", host: `api.${BASE}`, path: "/vms/vm_x/routes", secret: null }]);
    const provider = await through(`api.${BASE}`, "/traefik/config");
    expect(provider.json()).toEqual({ who: "wake-stub", host: `api.${BASE}`, path: "/traefik/config", secret: SECRET });
    expect(apiStub.seen.some((s) => s.path?.startsWith("/traefik"))).toBe(false);
    expect((await through(`a.b.${BASE}`)).status).toBe(404);
    expect((await through("web-one.example.com")).status).toBe(404);
  });

  it("wakes a sleeping VM through the real sidecar, then Traefik routes it directly after the next poll", async () => {
    const hits = { n: 0 };
    const placeholder = testConfig();
    const proxy = createWakeProxy(
      // The sidecar reads only the wake settings; the config service gets the final config below.
      { config: { ...placeholder, baseDomain: BASE, wakeSecret: SECRET, wakePageAfterMs: 0 }, database: t.database, platform: sim.platform, directory, log: silentLogger },
      { embedded: false },
    );
    const sidecar = await startWakeServer(
      {
        ...proxy,
        handleRequest: (req, res) => {
          hits.n++;
          proxy.handleRequest(req, res);
        },
      },
      { host: "127.0.0.1", port: 0 },
    );
    cleanups.push(() => proxy.close(), () => sidecar.close());
    const current = services[services.length - 1]!;
    const configB = testConfig({
      baseDomain: BASE,
      wakeUrl: sidecar.url,
      wakeSecret: SECRET,
      traefikToken: TOKEN,
      routeApiUrl: `http://127.0.0.1:${(apiStub.server.address() as AddressInfo).port}`,
    });
    await activate(configB);
    await current.stop();
    await expect
      .poll(async () => (await (await fetch(`http://127.0.0.1:${apiPort}/api/http/services/hatch-wake@http`)).json()).loadBalancer.servers[0].url, {
        timeout: 5000,
        interval: 50,
      })
      .toBe(sidecar.url);

    const vm = await sim.createVm({ guest_ports: [8080] });
    await insertRoute(t.database, { id: "rt_sleepy", vmId: vm.id, subdomain: "sleepy", targetPort: 8080 });
    await sim.snapshot(vm.id);
    await directory.refreshAll();
    await expect.poll(() => routerStatus("rt_sleepy"), { timeout: 5000, interval: 50 }).toBe(404);
    const bootBefore = sim.getVm(vm.id)!.boot_count;

    const woken = await through(`sleepy.${BASE}`, "/after-sleep");
    expect(woken.status).toBe(200);
    expect(woken.headers["x-hatch-cold-start"]).toBe("1");
    const echo = woken.json();
    expect([echo.vm_id, echo.port, echo.path, echo.boot]).toEqual([vm.id, 8080, "/after-sleep", bootBefore + 1]);
    expect(echo.headers.host).toBe(`sleepy.${BASE}`);
    expect(hits.n).toBe(1);
    expect(sim.getVm(vm.id)!.state).toBe("running");

    await expect.poll(() => routerStatus("rt_sleepy"), { timeout: 5000, interval: 50 }).toBe(200);
    const fast = await through(`sleepy.${BASE}`, "/fast");
    expect(fast.status).toBe(200);
    expect(fast.headers["x-hatch-cold-start"]).toBeUndefined();
    expect([fast.json().vm_id, fast.json().boot]).toEqual([vm.id, bootBefore + 1]);
    expect(hits.n).toBe(1);
  });

  it("tells a real Traefik's polls by their User-Agent (what pauses sleeps that cannot be confirmed)", async () => {
    const before = traefikPolls;
    const deadline = Date.now() + 5000;
    while (traefikPolls === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(traefikPolls).toBeGreaterThan(before);
  });

  it("logged no configuration error for any payload", async () => {
    const lines = readFileSync(logFile, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
    // At DEBUG Traefik logs every payload it applies: the log covers each config we served
    // (initial, route added, VM asleep, awake, deleted, new sidecar, woken VM...).
    const applied = lines.filter((l) => l.providerName === "http" && l.message === "Configuration received");
    expect(applied.length).toBeGreaterThanOrEqual(6);
    expect(applied.every((l) => l.config?.http?.routers?.["hatch-wake"]?.priority === 1)).toBe(true);
    const problems = lines.filter(
      (l) => ["error", "fatal", "panic"].includes(l.level) || /field not found|cannot decode|error while building|invalid rule|error parsing/i.test(JSON.stringify(l)),
    );
    expect(problems).toEqual([]);
  });
});
