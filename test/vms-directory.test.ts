import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger, silentLogger } from "../src/log.ts";
import { createVmDirectory } from "../src/vms/directory.ts";
import { createHatchClient } from "../src/vms/hatch-client.ts";
import { PlatformUnavailableError, type Vm, type VmPlatform } from "../src/vms/platform.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";

describe("VM directory over the simulator", () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: "127.0.43", restoreMs: 0 });
  });
  afterAll(() => sim.close());

  const fresh = (extra: Partial<Parameters<typeof createVmDirectory>[0]> = {}) => {
    const gone: string[] = [];
    const dir = createVmDirectory({
      platform: sim.platform,
      intervalMs: 50,
      log: silentLogger,
      onVmGone: async (id) => void gone.push(id),
      ...extra,
    });
    let fired = 0;
    dir.onChange(() => (fired += 1));
    return { dir, gone, fired: () => fired };
  };

  it("fills the cache; version and listeners move only when a state or address changes", async () => {
    const a = await sim.createVm();
    const b = await sim.createVm();
    const { dir, fired } = fresh();
    expect(dir.ready).toBe(false);
    expect(dir.version).toBe(0);
    await dir.refreshAll();
    expect(dir.ready).toBe(true);
    expect(dir.peek(a.id)).toMatchObject({ state: "running", guest_ip: a.guest_ip });
    expect([...dir.all().keys()]).toEqual(expect.arrayContaining([a.id, b.id]));
    expect([dir.version, fired()]).toEqual([1, 1]);

    await dir.refreshAll();
    expect([dir.version, fired()]).toEqual([1, 1]);

    await sim.snapshot(a.id);
    await dir.refreshAll();
    expect(dir.peek(a.id)?.state).toBe("snapshotted");
    expect([dir.version, fired()]).toEqual([2, 2]);

    // A counter that the cache does not compare (wake_count) is stored without a change event.
    await sim.restore(a.id);
    dir.record({ ...sim.getVm(a.id)!, state: "running" });
    expect([dir.version, fired()]).toEqual([3, 3]);
    dir.record({ ...sim.getVm(a.id)!, wake_count: 99 });
    expect([dir.version, fired()]).toEqual([3, 3]);
    expect(dir.peek(a.id)?.wake_count).toBe(99);
    await sim.deleteVm(a.id);
    await sim.deleteVm(b.id);
  });

  it("polls on start() and stops on stop()", async () => {
    const vm = await sim.createVm();
    const { dir } = fresh();
    dir.start();
    try {
      await expect.poll(() => dir.peek(vm.id)?.state).toBe("running");
      await sim.snapshot(vm.id);
      await expect.poll(() => dir.peek(vm.id)?.state).toBe("snapshotted");
    } finally {
      dir.stop();
    }
    const v = dir.version;
    await sim.restore(vm.id);
    await new Promise((r) => setTimeout(r, 200)); // four intervals: nothing may poll now
    expect(dir.version).toBe(v);
    expect(dir.peek(vm.id)?.state).toBe("snapshotted");
    await sim.deleteVm(vm.id);
  });

  it("a VM deleted on the platform (404) leaves the cache and triggers onVmGone once", async () => {
    const keep = await sim.createVm();
    const doomed = await sim.createVm();
    const { dir, gone, fired } = fresh();
    await dir.refreshAll();
    const v = dir.version;
    await sim.deleteVm(doomed.id);
    await dir.refreshAll();
    expect(gone).toEqual([doomed.id]);
    expect(dir.peek(doomed.id)).toBeUndefined();
    expect(dir.peek(keep.id)?.state).toBe("running");
    expect(dir.version).toBe(v + 1);
    expect(fired()).toBe(v + 1);
    await dir.refreshAll();
    expect(gone).toEqual([doomed.id]);

    // refreshOne sees a 404 the same way.
    await dir.refreshAll();
    await sim.deleteVm(keep.id);
    expect(await dir.refreshOne(keep.id)).toBeUndefined();
    expect(gone).toEqual([doomed.id, keep.id]);
    expect(dir.peek(keep.id)).toBeUndefined();
  });

  it("retries a failed onVmGone on the next refresh", async () => {
    const vm = await sim.createVm();
    let attempts = 0;
    const { dir } = fresh({
      onVmGone: async () => {
        attempts += 1;
        if (attempts === 1) throw new Error("database down");
      },
    });
    await dir.refreshAll();
    await sim.deleteVm(vm.id);
    await dir.refreshAll();
    expect(attempts).toBe(1);
    expect(dir.peek(vm.id)).toBeUndefined();
    await dir.refreshAll();
    expect(attempts).toBe(2);
    await dir.refreshAll();
    expect(attempts).toBe(2);
  });

  it("a slow list does not overwrite a state recorded after it was asked", async () => {
    const vm = await sim.createVm();
    await sim.snapshot(vm.id);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: VmPlatform = {
      ...sim.platform,
      list: async () => {
        const snapshot = await sim.platform.list();
        await gate;
        return snapshot;
      },
    };
    const { dir } = fresh({ platform: slow });
    const refreshing = dir.refreshAll();
    const woke = await sim.platform.wake(vm.id);
    dir.record(woke);
    release();
    await refreshing;
    expect(dir.peek(vm.id)?.state).toBe("running");
    await dir.refreshAll();
    expect(dir.peek(vm.id)?.state).toBe("running");
    await sim.deleteVm(vm.id);
  });
});

describe("VM directory when the platform fails (Hatch client, stub server)", () => {
  let server: Server;
  let url: string;
  let handler: (req: IncomingMessage, res: ServerResponse) => void = () => {};
  beforeAll(async () => {
    server = createServer((req, res) => handler(req, res));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const json = (res: ServerResponse, status: number, body: unknown) =>
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
  const vmA: Vm = { id: "vm_a", state: "running", guest_ip: "127.0.0.10" };
  const vmB: Vm = { id: "vm_b", state: "running", guest_ip: "127.0.0.11" };

  it("a VM missing from the list whose GET times out or fails with 5xx is kept; a 404 removes it", async () => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger("debug", {}, (l) => lines.push(JSON.parse(l)));
    const gone: string[] = [];
    const dir = createVmDirectory({
      platform: createHatchClient({ baseUrl: url, apiKey: "svc-key-xyz", timeoutMs: 200 }),
      intervalMs: 1000,
      log,
      onVmGone: async (id) => void gone.push(id),
    });
    handler = (_req, res) => json(res, 200, [vmA, vmB]);
    await dir.refreshAll();
    expect([...dir.all().keys()]).toEqual(["vm_a", "vm_b"]);
    const v = dir.version;

    // vm_b drops out of the list; its GET hangs (timeout).
    handler = (req, res) => (req.url === "/vms" ? json(res, 200, [vmA]) : undefined);
    await dir.refreshAll();
    expect(dir.peek("vm_b")).toEqual(vmB);
    expect(gone).toEqual([]);
    expect(dir.version).toBe(v);
    expect(lines.some((l) => l.msg === "vm missing from the list could not be confirmed; kept" && l.vm_id === "vm_b")).toBe(true);

    // Its GET answers 503.
    handler = (req, res) => (req.url === "/vms" ? json(res, 200, [vmA]) : json(res, 503, { error: "busy" }));
    await dir.refreshAll();
    expect(dir.peek("vm_b")).toEqual(vmB);
    expect(gone).toEqual([]);

    // The list itself fails: nothing changes, refreshAll rejects with PlatformUnavailableError.
    handler = (_req, res) => json(res, 500, { error: "boom" });
    await expect(dir.refreshAll()).rejects.toBeInstanceOf(PlatformUnavailableError);
    expect([...dir.all().keys()]).toEqual(["vm_a", "vm_b"]);
    expect(dir.version).toBe(v);

    // A definite 404.
    handler = (req, res) => (req.url === "/vms" ? json(res, 200, [vmA]) : json(res, 404, { error: "not found" }));
    await dir.refreshAll();
    expect(dir.peek("vm_b")).toBeUndefined();
    expect(gone).toEqual(["vm_b"]);
    expect(dir.version).toBe(v + 1);
    expect(JSON.stringify(lines)).not.toContain("svc-key-xyz");
  });

  it("polling logs a failing platform once, does not throw, and recovers", async () => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger("info", {}, (l) => lines.push(JSON.parse(l)));
    const dir = createVmDirectory({ platform: createHatchClient({ baseUrl: url, timeoutMs: 200 }), intervalMs: 20, log });
    let calls = 0;
    handler = (_req, res) => {
      calls += 1;
      json(res, 502, { error: "bad gateway" });
    };
    dir.start();
    try {
      await expect.poll(() => calls, { timeout: 5000 }).toBeGreaterThanOrEqual(4);
      expect(lines.filter((l) => l.msg === "vm sync failed; keeping the last known states")).toHaveLength(1);
      expect(dir.ready).toBe(false);
      handler = (_req, res) => json(res, 200, [vmA]);
      await expect.poll(() => dir.peek("vm_a")?.state, { timeout: 5000 }).toBe("running");
      expect(dir.ready).toBe(true);
      await expect.poll(() => lines.some((l) => l.msg === "vm sync recovered")).toBe(true);
    } finally {
      dir.stop();
    }
  });
});
