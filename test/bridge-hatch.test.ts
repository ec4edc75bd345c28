/**
 * Hatch's quirks and network, met by the product: a VM without a network, the snapshot limit, a
 * snapshot slower than any client timeout, two running VMs on one address, sleeps made on the
 * platform while GETs keep coming through the embedded front, and the wake's cost over the restore.
 * Runs on loopback in `npm test`, and again on the bridge network (each VM in a namespace of its
 * own, Hatch's order of a snapshot) by scripts/netns-suites.mjs; the parts that only mean anything
 * on the bridge run there only.
 */
import { request } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../src/log.ts";
import type { Stack } from "../src/stack.ts";
import { api, stackConfig, stackDatabase, stackPorts, standaloneSimulator, startSleepStack } from "./helpers/stack.ts";
import { waitFor } from "./helpers/front.ts";
import { simNetwork } from "./helpers/sim-network.ts";

const bridge = simNetwork === "bridge";
const PREFIX = "127.0.161";

/** GET `sub` on the stack's public proxy; status, the VM that answered (its echo), and how long it took. */
function get(stack: Stack, sub: string, path = "/"): Promise<{ status: number; vm?: string; error?: string; ms: number }> {
  const started = performance.now();
  const url = new URL(stack.proxy!.url);
  return new Promise((resolve) => {
    const req = request({ host: url.hostname, port: url.port, path, headers: { host: `${sub}.hatch.local` }, agent: false, timeout: 30_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => {
        let parsed: { vm_id?: string; error?: string } = {};
        try {
          parsed = JSON.parse(body);
        } catch {
          // not JSON: the status says enough
        }
        resolve({ status: res.statusCode ?? 0, vm: parsed.vm_id, error: parsed.error, ms: performance.now() - started });
      });
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => resolve({ status: 0, error: e.message, ms: performance.now() - started }));
    req.end();
  });
}

describe(`Hatch's quirks, on the ${simNetwork} network`, () => {
  const logs: string[] = [];
  let sim: Awaited<ReturnType<typeof standaloneSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  let stack: Stack;
  const platform = (method: string, path: string, body?: unknown) =>
    fetch(sim.url + path, { method, headers: body ? { "content-type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined }).then(async (r) => ({ status: r.status, json: (await r.json()) as any }));

  beforeAll(async () => {
    // A short snapshot pause keeps ten sleeps quick; the 45 s one below has a simulator of its own.
    sim = await standaloneSimulator(PREFIX, 200, undefined, { snapshotMs: 200 });
    db = await stackDatabase("pglite");
    const ports = await stackPorts();
    stack = await startSleepStack(
      stackConfig(ports, { ...db.overrides, hatchApiUrl: sim.url, idleTimeoutMs: 3000, idleCheckIntervalMs: 250, vmSyncIntervalMs: 300 }),
      "embedded",
      { settleMs: 50, minDrainMs: 50 },
      createLogger("info", {}, (line) => logs.push(line)),
    );
  }, 60_000);

  afterAll(async () => {
    await stack?.close();
    await sim?.close();
    await db?.drop();
  });

  it("a VM made without a network is listed and followed; its route answers 503 vm has no network, and the others are untouched", async () => {
    const dark = await platform("POST", "/vms", { enable_network: false });
    const lit = await platform("POST", "/vms", {});
    expect([dark.status, dark.json.guest_ip, dark.json.enable_network]).toEqual([201, undefined, false]);
    const list = await platform("GET", "/vms");
    // Newest first, as Hatch lists them.
    expect(list.json.map((v: { id: string }) => v.id).slice(0, 2)).toEqual([lit.json.id, dark.json.id]);
    await stack.directory.refreshAll();
    expect(stack.directory.peek(dark.json.id)?.state).toBe("running");
    expect((await api(stack, "POST", `/vms/${dark.json.id}/routes`, { subdomain: "dark", target_port: 8080 })).status).toBe(201);
    expect((await api(stack, "POST", `/vms/${lit.json.id}/routes`, { subdomain: "lit", target_port: 8080 })).status).toBe(201);
    expect(await get(stack, "dark")).toMatchObject({ status: 503, error: "vm has no network" });
    expect(await get(stack, "lit")).toMatchObject({ status: 200, vm: lit.json.id });
    expect(stack.configService!.current()!.json).not.toContain(dark.json.id);
  });

  it("the 11th sleep of one VM is refused with Hatch's text; the VM keeps serving, activity says why, and the sweeper leaves it alone", async () => {
    const vm = (await platform("POST", "/vms", {})).json;
    expect((await api(stack, "POST", `/vms/${vm.id}/routes`, { subdomain: "tenth", target_port: 8080 })).status).toBe(201);
    for (let i = 1; i <= 10; i++) {
      const slept = await api(stack, "POST", `/vms/${vm.id}/sleep`, {});
      expect([i, slept.status, slept.json.state]).toEqual([i, 200, "snapshotted"]);
      expect(await get(stack, "tenth")).toMatchObject({ status: 200, vm: vm.id });
    }
    const refused = await api(stack, "POST", `/vms/${vm.id}/sleep`, {});
    expect([refused.status, refused.json.code, refused.json.error]).toEqual([409, "sleep_blocked", "the VM platform refused to put the vm to sleep: snapshot limit reached (10/10)"]);
    expect(await get(stack, "tenth")).toMatchObject({ status: 200, vm: vm.id });
    const activity = await api(stack, "GET", `/vms/${vm.id}/activity`);
    expect(activity.json).toMatchObject({ state: "running", sleep_blocked: "snapshot limit reached (10/10)", sleeps_at: null });
    const idleTries = () => logs.filter((l) => l.includes('"msg":"vm sleep"') && l.includes(vm.id) && l.includes('"reason":"idle"')).length;
    // Idle for twice the idle timeout, with the sweeper looking every 250 ms: not one attempt.
    await new Promise((r) => setTimeout(r, 6500));
    expect(idleTries()).toBe(0);
    expect(logs.filter((l) => l.includes("vm sleep blocked")).length).toBe(1);
    expect((await platform("GET", `/vms/${vm.id}`)).json.state).toBe("running");
    const metrics = await (await fetch(`${stack.api!.url}/metrics`)).text();
    expect(metrics).toMatch(/^hatch_vms_sleep_blocked 1$/m);
    expect(metrics).toMatch(/^hatch_sleep_blocked_total 1$/m);
  }, 60_000);

  it("no wake waits out an ARP timeout: 1 and 100 requests to a sleeping VM, one restore each", async () => {
    const vm = (await platform("POST", "/vms", { restore_ms: 300 })).json;
    expect((await api(stack, "POST", `/vms/${vm.id}/routes`, { subdomain: "cold", target_port: 8080 })).status).toBe(201);
    const overhead: Record<number, number> = {};
    for (const n of [1, 100]) {
      expect((await api(stack, "POST", `/vms/${vm.id}/sleep`, {})).status).toBe(200);
      const answers = await Promise.all(Array.from({ length: n }, () => get(stack, "cold", `/?n=${n}`)));
      expect(answers.every((a) => a.status === 200 && a.vm === vm.id)).toBe(true);
      overhead[n] = Math.round(Math.max(...answers.map((a) => a.ms)) - 300);
    }
    console.log(`[bridge-hatch] ${simNetwork}: wake overhead over a 300 ms restore: N=1 +${overhead[1]} ms, N=100 +${overhead[100]} ms`);
    // The figures against their goals (+50 / +250 ms) are the wake benchmark's (`npm run bench -- wake`,
    // bridge beside loopback in one run); here, on a shared machine, only what a stall would break:
    // a connect to a guest that is not yet linked fails after 3 s of ARP, and none may be waited out.
    expect(overhead[1]).toBeLessThan(1500);
    expect(overhead[100]).toBeLessThan(2500);
    expect((await platform("GET", `/vms/${vm.id}`)).json.wake_count).toBe(2);
  }, 30_000);

  it.runIf(bridge)("sleeps made on the platform in Hatch's order, under GETs through the embedded front: every GET is answered", async () => {
    const vm = (await platform("POST", "/vms", { restore_ms: 300 })).json;
    expect((await api(stack, "POST", `/vms/${vm.id}/routes`, { subdomain: "steady", target_port: 8080 })).status).toBe(201);
    const failed: string[] = [];
    const latencies: number[] = [];
    let stop = false;
    const client = async () => {
      while (!stop) {
        const r = await get(stack, "steady", "/load");
        latencies.push(r.ms);
        if (r.status !== 200 || r.vm !== vm.id) failed.push(`${r.status} ${r.error ?? ""}`);
      }
    };
    const clients = Array.from({ length: 4 }, client);
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 500));
      // As Hatch's own idle monitor would: straight to the platform, paused (still running) first.
      const snap = await platform("POST", `/vms/${vm.id}/snapshot`);
      expect(snap.status).toBe(201);
      try {
        await waitFor(async () => (await platform("GET", `/vms/${vm.id}`)).json.state === "running", "the vm woken again", 20_000);
      } catch (err) {
        console.log(`[bridge-hatch] not woken: ${failed.length} failed (${failed.slice(0, 5).join("; ")}), state ${(await platform("GET", `/vms/${vm.id}`)).json.state}\n${logs.slice(-30).join("\n")}`);
        throw err;
      }
    }
    stop = true;
    await Promise.all(clients);
    latencies.sort((a, b) => a - b);
    console.log(`[bridge-hatch] bridge: ${latencies.length} GETs through 3 platform sleeps, p50 ${Math.round(latencies[Math.floor(latencies.length / 2)]!)} ms, p99 ${Math.round(latencies[Math.floor(latencies.length * 0.99)]!)} ms, failed ${failed.length}`);
    expect(failed).toEqual([]);
  }, 90_000);
});

describe.runIf(bridge)("a snapshot slower than any client timeout (45 s), on the bridge network", () => {
  let sim: Awaited<ReturnType<typeof standaloneSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  let stack: Stack;

  beforeAll(async () => {
    sim = await standaloneSimulator("127.0.162", 200, undefined, { snapshotMs: 45_000 });
    db = await stackDatabase("pglite");
    stack = await startSleepStack(stackConfig(await stackPorts(), { ...db.overrides, hatchApiUrl: sim.url, idleTimeoutMs: 0 }), "embedded", { settleMs: 50, minDrainMs: 50 });
  }, 60_000);

  afterAll(async () => {
    await stack?.close();
    await sim?.close();
    await db?.drop();
  });

  it("completes as a sleep: never cancelled, the VM not left paused", async () => {
    const vm = await sim.sim.createVm();
    expect((await api(stack, "POST", `/vms/${vm.id}/routes`, { subdomain: "slow", target_port: 8080 })).status).toBe(201);
    const started = Date.now();
    const slept = await api(stack, "POST", `/vms/${vm.id}/sleep`, {});
    expect([slept.status, slept.json.state]).toEqual([200, "snapshotted"]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(45_000);
    expect(sim.sim.getVm(vm.id)?.state).toBe("snapshotted");
    expect(sim.sim.snapshots(vm.id)).toHaveLength(1);
  }, 90_000);
});

describe.runIf(bridge)("two running VMs given one guest address (HATCH_SIM_REUSE_IPS=1), on the bridge network", () => {
  let sim: Awaited<ReturnType<typeof standaloneSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  let stack: Stack;

  beforeAll(async () => {
    sim = await standaloneSimulator("127.0.163", 200, undefined, { reuseIps: true });
    db = await stackDatabase("pglite");
    stack = await startSleepStack(stackConfig(await stackPorts(), { ...db.overrides, hatchApiUrl: sim.url, idleTimeoutMs: 0, vmSyncIntervalMs: 200 }), "embedded");
  }, 60_000);

  afterAll(async () => {
    await stack?.close();
    await sim?.close();
    await db?.drop();
  });

  it("neither gets a direct router, both routes answer 503 naming the conflict, and no request reaches the wrong VM", async () => {
    const a = await sim.sim.createVm();
    expect((await api(stack, "POST", `/vms/${a.id}/routes`, { subdomain: "alpha", target_port: 8080 })).status).toBe(201);
    await sim.sim.snapshot(a.id);
    const b = await sim.sim.createVm();
    expect(b.guest_ip).toBe(a.guest_ip);
    expect((await api(stack, "POST", `/vms/${b.id}/routes`, { subdomain: "beta", target_port: 8080 })).status).toBe(201);
    await sim.sim.restore(a.id);
    await waitFor(async () => {
      await stack.directory.refreshAll();
      return stack.directory.peek(a.id)?.state === "running";
    }, "a's restore seen");
    await stack.configService!.refresh();
    const config = JSON.parse(stack.configService!.current()!.json) as { http: { routers: Record<string, { service: string }> } };
    const routed = JSON.stringify(config.http.routers);
    expect(routed).not.toContain("alpha");
    expect(routed).not.toContain("beta");
    const answers = await Promise.all([...Array(20)].flatMap((_, i) => [get(stack, "alpha", `/?rid=a${i}`), get(stack, "beta", `/?rid=b${i}`)]));
    for (const r of answers) expect(r).toMatchObject({ status: 503, error: `guest address conflict: another running vm claims this vm's address (${a.guest_ip})` });
    // Not one request reached either guest.
    expect([sim.sim.requestCounts(a.id), sim.sim.requestCounts(b.id)]).toEqual([{}, {}]);
    const metrics = await (await fetch(`${stack.api!.url}/metrics`)).text();
    expect(metrics).toMatch(/^hatch_guest_address_conflicts 1$/m);
  }, 60_000);
});
