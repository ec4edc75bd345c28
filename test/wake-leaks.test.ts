/**
 * A wake leaves nothing running: no timers, no sockets, once the proxy and its server are closed.
 * Alone in its own file (and on PGlite, which has no sockets of its own) so that nothing else in
 * the process opens or ages handles while they are counted.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call } from "./helpers/wake-fixture.ts";

describe("wake proxy resources", () => {
  let t: TestDb;
  let sim: Simulator;
  beforeAll(async () => {
    t = await freshDb("pglite");
    sim = await createSimulator({ ipPrefix: "127.77.4", restoreMs: 300 });
  });
  afterAll(async () => {
    await sim.close();
    await t.drop();
  });

  const handles = () => {
    const counts: Record<string, number> = {};
    for (const r of process.getActiveResourcesInfo()) if (r === "Timeout" || r.startsWith("TCP")) counts[r] = (counts[r] ?? 0) + 1;
    return counts;
  };

  it("a timed-out wake, a cold request and hot requests: handles back to the baseline after close()", async () => {
    const vm = await sim.createVm();
    const host = `${(await addRoute(t.database, vm.id)).subdomain}.hatch.local`;
    await sim.snapshot(vm.id);
    const before = handles();
    const config = testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0, wakeTimeoutMs: 150 });
    const proxy = createWakeProxy({ config, database: t.database, platform: sim.platform, directory: fakeDirectory({ platform: sim.platform }), log: silentLogger }, { embedded: true });
    const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
    const r = await call(server.url, { host });
    expect([r.status, r.json()]).toEqual([504, { error: "vm did not become ready within 150ms (HATCH_PROXY_WAKE_TIMEOUT)" }]);
    await expect.poll(() => sim.getVm(vm.id)!.state, { timeout: 5000 }).toBe("running");
    for (let i = 0; i < 3; i++) expect((await call(server.url, { host })).status).toBe(200);
    await sim.snapshot(vm.id);
    const longer = createWakeProxy({ config: { ...config, wakeTimeoutMs: 5000 }, database: t.database, platform: sim.platform, directory: fakeDirectory({ platform: sim.platform }), log: silentLogger }, { embedded: true });
    const server2 = await startWakeServer(longer, { host: "127.0.0.1", port: 0 });
    expect((await call(server2.url, { host })).headers["x-hatch-cold-start"]).toBe("1");
    await Promise.all([proxy.close(), longer.close()]);
    await Promise.all([server.close(), server2.close()]);
    // The guest's own sockets to the (now closed) pool go away when the guest notices.
    await expect.poll(handles, { timeout: 5000 }).toEqual(before);
  });
});
