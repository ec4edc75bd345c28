/**
 * Issue 10, item 14: a simulated VM's guest address is a loopback address of the host, so a route
 * to a port the VM does not serve must never be dialed (it would reach the host's own service on
 * that port). It answers as a closed port, on every path: plain requests, upgrades, a sleeping VM,
 * Traefik's direct routers, the simulator over HTTP.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { createConfigService } from "../src/traefik/config-service.ts";
import { createHatchClient } from "../src/vms/hatch-client.ts";
import type { VmPlatform } from "../src/vms/platform.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call } from "./helpers/wake-fixture.ts";

const HOST_SECRET = "the host's own service answered";

describe("routes to ports a simulated VM does not serve", () => {
  let t: TestDb;
  let sim: Simulator;
  let simApi: { url: string; close(): Promise<void> };
  let host: Server;
  let hostPort: number;
  beforeAll(async () => {
    t = await freshDb("pglite");
    sim = await createSimulator({ ipPrefix: "127.78.14", restoreMs: 50 });
    simApi = await sim.listen({ port: 0 });
    // Something the host runs on all interfaces, as Postgres or a metrics agent may.
    host = createServer((_req, res) => res.end(HOST_SECRET));
    host.on("upgrade", (_req, socket) => socket.end(`HTTP/1.1 101 Switching Protocols\r\nX-Leak: ${HOST_SECRET}\r\n\r\n`));
    await new Promise<void>((r) => host.listen(0, "0.0.0.0", () => r()));
    hostPort = (host.address() as AddressInfo).port;
  });
  afterAll(async () => {
    host.closeAllConnections();
    await new Promise((r) => host.close(r));
    await simApi.close();
    await sim.close();
    await t.drop();
  });

  it("the hazard is real: the host's service answers on the VM's guest address", async () => {
    const vm = await sim.createVm();
    const r = await call(`http://${vm.guest_ip}:${hostPort}`, { host: "x" });
    expect(r.text).toBe(HOST_SECRET);
  });

  it.each(["in process", "over Hatch's HTTP API"])("through the proxy (simulator %s): a closed port for plain requests, upgrades and a sleeping VM; the served port works", async (how) => {
    const platform: VmPlatform = how === "in process" ? sim.platform : createHatchClient({ baseUrl: simApi.url, timeoutMs: 2000 });
    const proxy = createWakeProxy(
      { config: testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0 }), database: t.database, platform, directory: fakeDirectory({ platform }), log: silentLogger },
      { embedded: true },
    );
    const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
    try {
      const running = await sim.createVm();
      const sleeping = await sim.createVm();
      await sim.snapshot(sleeping.id);
      const wakesBefore = sim.getVm(sleeping.id)!.wake_count;
      const toHost = await addRoute(t.database, running.id, { port: hostPort });
      const served = await addRoute(t.database, running.id, { port: 8080 });
      const sleepingToHost = await addRoute(t.database, sleeping.id, { port: hostPort });
      const closed = { error: `vm port ${hostPort} refused the connection` };

      const plain = await call(server.url, { host: `${toHost.subdomain}.hatch.local` });
      expect([plain.status, plain.json()]).toEqual([502, closed]);
      const post = await call(server.url, { host: `${toHost.subdomain}.hatch.local`, method: "POST", body: "x" });
      expect([post.status, post.json()]).toEqual([502, closed]);
      const asleep = await call(server.url, { host: `${sleepingToHost.subdomain}.hatch.local` });
      expect([asleep.status, asleep.json()]).toEqual([502, closed]);
      expect(sim.getVm(sleeping.id)!.wake_count).toBe(wakesBefore);

      const upgraded = await new Promise<{ status?: number; leaked: boolean }>((resolve) => {
        const ws = new WebSocket(`${server.url.replace("http", "ws")}/ws`, { headers: { host: `${toHost.subdomain}.hatch.local` } });
        ws.on("unexpected-response", (_req, res) => resolve({ status: res.statusCode, leaked: JSON.stringify(res.headers).includes(HOST_SECRET) }));
        ws.on("upgrade", (res) => resolve({ status: 101, leaked: JSON.stringify(res.headers).includes(HOST_SECRET) }));
        ws.on("error", () => resolve({ leaked: false }));
      });
      expect(upgraded).toEqual({ status: 502, leaked: false });

      const ok = await call(server.url, { host: `${served.subdomain}.hatch.local` });
      expect([ok.status, ok.json().vm_id]).toEqual([200, running.id]);
    } finally {
      await proxy.close();
      await server.close();
    }
  });

  it("Traefik gets no direct router for such a route (the sidecar answers it), and keeps the served one", async () => {
    const vm = await sim.createVm();
    const toHost = await addRoute(t.database, vm.id, { port: hostPort });
    const served = await addRoute(t.database, vm.id, { port: 8080 });
    const directory = fakeDirectory({ platform: sim.platform });
    await directory.refreshAll();
    const service = createConfigService({ database: t.database, directory, config: testConfig(), log: silentLogger, resyncMs: 60_000 });
    await service.start();
    try {
      const config = JSON.parse(service.current()!.json);
      const urls = JSON.stringify(config.http.services);
      expect(urls).not.toContain(`:${hostPort}"`);
      expect(Object.keys(config.http.routers)).not.toContain(`rt_${toHost.id.slice(3)}`);
      expect(urls).toContain(`"http://${vm.guest_ip}:8080"`);
      expect(Object.keys(config.http.services).some((s) => s.includes(served.id.slice(3)))).toBe(true);
    } finally {
      await service.stop();
    }
  });
});
