/** Several sidecar replicas on one Postgres database wake a VM once (advisory lock across processes). */
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openDatabase, type Database } from "../src/db/client.ts";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import type { VmPlatform } from "../src/vms/platform.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { dbKinds, freshDb, type TestDb } from "./helpers/db.ts";
import { fakeDirectory } from "./helpers/fakes.ts";
import { addRoute, call, sha256 } from "./helpers/wake-fixture.ts";

const hasPostgres = (await dbKinds()).includes("postgres");

describe.skipIf(!hasPostgres)("two sidecars on one Postgres", () => {
  let t: TestDb;
  let second: Database;
  let sim: Simulator;
  let wakeCalls = 0;
  const stops: (() => Promise<void>)[] = [];
  const urls: string[] = [];

  beforeAll(async () => {
    t = await freshDb("postgres");
    // A second handle = a second pool of connections, as a second sidecar process would have.
    second = await openDatabase({ url: t.url });
    sim = await createSimulator({ ipPrefix: "127.77.3", restoreMs: 300 });
    // Counted on the way to the platform, and slow to show "starting" (as a remote API may be): the
    // simulator alone flips the state at once and coalesces restores, which would hide a missing lock.
    const counting: VmPlatform = {
      ...sim.platform,
      kind: "simulator",
      async wake(id, o) {
        wakeCalls += 1;
        await new Promise((r) => setTimeout(r, 100));
        return sim.platform.wake(id, o);
      },
    };
    for (const database of [t.database, second]) {
      const config = testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0 });
      const directory = fakeDirectory({ platform: sim.platform });
      const proxy = createWakeProxy({ config, database, platform: counting, directory, log: silentLogger }, { embedded: false });
      const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
      urls.push(server.url);
      stops.push(async () => {
        await proxy.close();
        await server.close();
      });
    }
  });
  afterAll(async () => {
    for (const s of stops) await s();
    await sim.close();
    await second?.close();
    await t.drop();
  });

  it("concurrent requests to both replicas → one platform wake, every request answered with its body", async () => {
    const vm = await sim.createVm();
    const host = `${(await addRoute(t.database, vm.id)).subdomain}.hatch.local`;
    await sim.snapshot(vm.id);
    wakeCalls = 0;
    const bodies = Array.from({ length: 60 }, () => randomBytes(2048));
    const replies = await Promise.all(bodies.map((body, i) => call(urls[i % 2]!, { host, method: "POST", body })));
    replies.forEach((r, i) => {
      expect(r.status).toBe(200);
      expect(r.json().body_sha256).toBe(sha256(bodies[i]!));
      expect(r.headers["x-hatch-cold-start"]).toBe("1");
    });
    expect(wakeCalls).toBe(1);
    expect(sim.getVm(vm.id)!.wake_count).toBe(1);
  });

  it("again after the VM went back to sleep (nothing cached across wakes)", async () => {
    const vm = await sim.createVm();
    const host = `${(await addRoute(t.database, vm.id)).subdomain}.hatch.local`;
    for (let round = 1; round <= 2; round++) {
      await sim.snapshot(vm.id);
      wakeCalls = 0;
      const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => call(urls[i % 2]!, { host })));
      expect(replies.map((r) => r.status)).toEqual(Array(20).fill(200));
      expect(wakeCalls).toBe(1);
      expect(sim.getVm(vm.id)!.wake_count).toBe(round);
    }
  });
});
