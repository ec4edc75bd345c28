import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { WakeError } from "../src/vms/platform.ts";
import { createSimulator, ownerOfKey, type Simulator, type SimVm } from "../src/vms/simulator/index.ts";

const PREFIX = "127.0.41";
const RESTORE_MS = 150;

/** "connected" or the socket error code (ECONNREFUSED for a sleeping VM). */
function tryConnect(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.once("connect", () => {
      s.destroy();
      resolve("connected");
    });
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

const guestUrl = (vm: SimVm, path = "/", port = vm.guest_ports[0]!) => `http://${vm.guest_ip}:${port}${path}`;

describe("simulator REST API: states and Hatch's texts", () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: RESTORE_MS });
  });
  afterAll(() => sim.close());

  const call = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await sim.app.request(path, {
      method,
      headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as any, headers: res.headers };
  };

  it("creates a running VM with Hatch's fields and the simulator's counters", async () => {
    const r = await call("POST", "/vms", {});
    expect(r.status).toBe(201);
    expect(r.body.id).toMatch(/^vm_[a-z0-9]{12}$/);
    expect(r.body).toMatchObject({
      image_id: "sim",
      state: "running",
      vcpu_count: 1,
      mem_mib: 256,
      enable_network: true,
      guest_ports: [8080],
      restore_ms: RESTORE_MS,
      wake_count: 0,
      boot_count: 1,
    });
    expect(r.body.guest_ip).toMatch(/^127\.0\.41\.\d+$/);
    expect(r.body.guest_mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(typeof r.body.ssh_port).toBe("number");
    expect(Date.parse(r.body.created_at)).not.toBeNaN();
    expect(r.body.owner).toBeUndefined();
    expect((await call("GET", `/vms/${r.body.id}`)).body).toEqual(r.body);
    await call("DELETE", `/vms/${r.body.id}`);
  });

  it("rejects bad create bodies with 400 and creates nothing", async () => {
    const before = sim.listVms().length;
    expect(await call("POST", "/vms", { image_id: "x" })).toMatchObject({ status: 400, body: { error: 'unknown field "image_id"' } });
    expect(await call("POST", "/vms", { guest_ports: [0] })).toMatchObject({
      status: 400,
      body: { error: "guest_ports must be 1 to 16 distinct integers between 1 and 65535" },
    });
    expect((await call("POST", "/vms", { guest_ports: "8080" })).status).toBe(400);
    expect((await call("POST", "/vms", { guest_ports: [80, 80] })).status).toBe(400);
    expect(await call("POST", "/vms", { restore_ms: -1 })).toMatchObject({
      status: 400,
      body: { error: "restore_ms must be an integer between 0 and 600000" },
    });
    expect(await call("POST", "/vms", "{nope")).toMatchObject({ status: 400, body: { error: "request body must be valid JSON" } });
    expect(await call("POST", "/vms", "[1]")).toMatchObject({ status: 400, body: { error: "request body must be a JSON object" } });
    expect(sim.listVms().length).toBe(before);
  });

  it("404, 405 and unknown paths answer JSON", async () => {
    expect(await call("GET", "/vms/vm_nope")).toMatchObject({ status: 404, body: { error: "not found" } });
    expect(await call("POST", "/vms/vm_nope/restore")).toMatchObject({ status: 404, body: { error: "not found" } });
    expect(await call("DELETE", "/vms/vm_nope")).toMatchObject({ status: 404, body: { error: "not found" } });
    const r = await call("PUT", "/vms");
    expect(r).toMatchObject({ status: 405, body: { error: "method not allowed" } });
    expect(r.headers.get("allow")).toBe("POST, GET");
    expect(await call("GET", "/nope")).toMatchObject({ status: 404, body: { error: "not found" } });
  });

  it("walks snapshot → restore → stop → start with Hatch's transition errors (a 500 with Go's text, as Hatch answers them)", async () => {
    const { body: vm } = await call("POST", "/vms", { restore_ms: 300 });
    const id = vm.id as string;
    expect(await call("POST", `/vms/${id}/restore`)).toMatchObject({
      status: 500,
      body: { error: "vm must be snapshotted to restore (current state: running)" },
    });
    expect(await call("POST", `/vms/${id}/start`)).toMatchObject({
      status: 500,
      body: { error: "vm must be stopped to start (current state: running)" },
    });

    const snap = await call("POST", `/vms/${id}/snapshot`);
    expect(snap.status).toBe(201);
    expect(snap.body.id).toMatch(/^snap_[a-z0-9]{12}$/);
    expect(snap.body.vm_id).toBe(id);
    expect(Date.parse(snap.body.created_at)).not.toBeNaN();
    expect((await call("GET", `/vms/${id}`)).body.state).toBe("snapshotted");
    expect(await call("POST", `/vms/${id}/snapshot`)).toMatchObject({
      status: 500,
      body: { error: "vm must be running to snapshot (current state: snapshotted)" },
    });

    const t0 = performance.now();
    const restoring = call("POST", `/vms/${id}/restore`);
    await expect.poll(() => sim.getVm(id)?.state).toBe("starting");
    expect(await call("POST", `/vms/${id}/restore`)).toMatchObject({
      status: 500,
      body: { error: "vm must be snapshotted to restore (current state: starting)" },
    });
    expect(await call("POST", `/vms/${id}/stop`)).toMatchObject({
      status: 500,
      body: { error: "vm must be running or snapshotted to stop (current state: starting)" },
    });
    const restored = await restoring;
    expect(performance.now() - t0).toBeGreaterThanOrEqual(300);
    expect(restored.status).toBe(200);
    expect(restored.body).toMatchObject({ id, state: "running", wake_count: 1, boot_count: 2, guest_ip: vm.guest_ip, guest_mac: vm.guest_mac });

    const stopped = await call("POST", `/vms/${id}/stop`);
    expect(stopped).toMatchObject({ status: 200, body: { id, state: "stopped" } });
    expect(await call("POST", `/vms/${id}/stop`)).toMatchObject({
      status: 500,
      body: { error: "vm must be running or snapshotted to stop (current state: stopped)" },
    });
    expect(await call("POST", `/vms/${id}/restore`)).toMatchObject({
      status: 500,
      body: { error: "vm must be snapshotted to restore (current state: stopped)" },
    });
    const started = await call("POST", `/vms/${id}/start`);
    expect(started).toMatchObject({ status: 200, body: { state: "running", wake_count: 2, boot_count: 3 } });

    await call("POST", `/vms/${id}/snapshot`);
    expect(await call("POST", `/vms/${id}/stop`)).toMatchObject({ status: 200, body: { state: "stopped" } });

    expect(await call("DELETE", `/vms/${id}`)).toEqual({ status: 200, body: { status: "deleted" }, headers: expect.anything() });
    expect(await call("GET", `/vms/${id}`)).toMatchObject({ status: 404, body: { error: "not found" } });
  });

  it("fails injected restores with 500, back to snapshotted, without counting a wake", async () => {
    const { body: vm } = await call("POST", "/vms", { restore_ms: 0 });
    await call("POST", `/vms/${vm.id}/snapshot`);
    expect(await call("POST", `/vms/${vm.id}/fail-restores`, { count: 2 })).toMatchObject({ status: 200 });
    expect((await call("POST", `/vms/${vm.id}/fail-restores`, { count: "2" })).status).toBe(400);
    for (let i = 0; i < 2; i++) {
      expect(await call("POST", `/vms/${vm.id}/restore`)).toMatchObject({ status: 500, body: { error: "restore failed: injected failure" } });
      expect(sim.getVm(vm.id)).toMatchObject({ state: "snapshotted", wake_count: 0, boot_count: 1 });
      expect(await tryConnect(vm.guest_ip!, 8080)).toBe("ECONNREFUSED");
    }
    expect(await call("POST", `/vms/${vm.id}/restore`)).toMatchObject({ status: 200, body: { state: "running", wake_count: 1, boot_count: 2 } });

    await sim.stop(vm.id);
    sim.failNextRestores(vm.id, 1);
    expect(await call("POST", `/vms/${vm.id}/start`)).toMatchObject({ status: 500, body: { error: "start failed: injected failure" } });
    expect(sim.getVm(vm.id)?.state).toBe("stopped");
    await sim.deleteVm(vm.id);
  });

  it("scopes VMs per API key; no key sees everything", async () => {
    const a = await call("POST", "/vms", {}, { authorization: "Bearer key-a" });
    const b = await call("POST", "/vms", {}, { "x-api-key": "key-b" });
    const shared = await call("POST", "/vms", {});
    expect([a.status, b.status, shared.status]).toEqual([201, 201, 201]);
    const ids = (r: { body: SimVm[] }) => r.body.map((v) => v.id).sort();

    expect(ids(await call("GET", "/vms", undefined, { "x-api-key": "key-a" }))).toEqual([a.body.id, shared.body.id].sort());
    expect(ids(await call("GET", "/vms", undefined, { authorization: "Bearer key-b" }))).toEqual([b.body.id, shared.body.id].sort());
    expect(ids(await call("GET", "/vms"))).toEqual(expect.arrayContaining([a.body.id, b.body.id, shared.body.id]));
    expect(await call("GET", `/vms/${a.body.id}`, undefined, { authorization: "Bearer key-b" })).toMatchObject({ status: 404, body: { error: "not found" } });
    expect(await call("POST", `/vms/${a.body.id}/snapshot`, undefined, { authorization: "Bearer key-b" })).toMatchObject({ status: 404 });
    expect(await call("DELETE", `/vms/${a.body.id}`, undefined, { authorization: "Bearer key-b" })).toMatchObject({ status: 404 });
    expect(sim.getVm(a.body.id)?.state).toBe("running");
    expect(await call("GET", "/vms", undefined, { authorization: "Basic eA==" })).toMatchObject({ status: 401, body: { error: "invalid authorization header" } });

    // The in-process platform scopes by the forwarded user key the same way.
    expect(await sim.platform.get(a.body.id, { userKey: "key-b" })).toBeUndefined();
    expect((await sim.platform.get(a.body.id, { userKey: "key-a" }))?.id).toBe(a.body.id);
    expect((await sim.platform.list({ userKey: "key-b" })).map((v) => v.id).sort()).toEqual([b.body.id, shared.body.id].sort());
    await sim.snapshot(a.body.id);
    await expect(sim.platform.wake(a.body.id, { userKey: "key-b" })).rejects.toMatchObject({ reason: "not_found" });
    expect((await sim.platform.wake(a.body.id, { userKey: "key-a" })).state).toBe("running");

    // createVm can tag an owner directly.
    const tagged = await sim.createVm({ ownerKey: "key-c" });
    expect(await sim.platform.get(tagged.id, { userKey: "key-a" })).toBeUndefined();
    const tagged2 = await sim.createVm({ owner: ownerOfKey("key-c") });
    expect((await sim.platform.list({ userKey: "key-c" })).map((v) => v.id)).toEqual(expect.arrayContaining([tagged.id, tagged2.id]));
    for (const id of [a.body.id, b.body.id, shared.body.id, tagged.id, tagged2.id]) await sim.deleteVm(id);
  });
});

describe("simulator guest servers (real sockets)", () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: RESTORE_MS });
  });
  afterAll(() => sim.close());

  it("answers on its own loopback IP with a description of the request", async () => {
    const vm = await sim.createVm({ guest_ports: [8080, 3000] });
    const body = Buffer.from("hello guest");
    const res = await fetch(guestUrl(vm, "/some/path?x=1&y=two"), { method: "POST", body, headers: { "x-test": "yes" } });
    expect(res.status).toBe(200);
    const j = (await res.json()) as any;
    expect(j).toMatchObject({
      vm_id: vm.id,
      port: 8080,
      boot: 1,
      method: "POST",
      path: "/some/path",
      query: { x: "1", y: "two" },
      body_length: body.length,
      body_sha256: createHash("sha256").update(body).digest("hex"),
    });
    expect(j.headers["x-test"]).toBe("yes");
    expect(j.headers.host).toBe(`${vm.guest_ip}:8080`);
    const other = (await (await fetch(guestUrl(vm, "/", 3000))).json()) as any;
    expect(other).toMatchObject({ vm_id: vm.id, port: 3000, method: "GET", body_length: 0 });
    // Only the guest IP listens, not 127.0.0.1.
    const wrongIp = vm.guest_ip === "127.0.0.1" ? "127.0.0.2" : "127.0.0.1";
    expect(await tryConnect(wrongIp, 3000)).toBe("ECONNREFUSED");
    await sim.deleteVm(vm.id);
  });

  it("refuses connections while snapshotted, drops open ones, and answers again after restore_ms", async () => {
    const vm = await sim.createVm({ restore_ms: 400 });
    expect(await tryConnect(vm.guest_ip!, 8080)).toBe("connected");
    // A response in progress (headers sent, body still streaming) is cut when the VM sleeps.
    const streaming = await fetch(guestUrl(vm, "/stream?n=3&ms=10000"));
    expect(streaming.status).toBe(200);
    await sim.snapshot(vm.id);
    await expect(streaming.text()).rejects.toThrow("terminated");
    expect(await tryConnect(vm.guest_ip!, 8080)).toBe("ECONNREFUSED");

    const t0 = performance.now();
    const restoring = sim.restore(vm.id);
    expect(sim.getVm(vm.id)?.state).toBe("starting");
    expect(await tryConnect(vm.guest_ip!, 8080)).toBe("ECONNREFUSED");
    const woke = await restoring;
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(400);
    expect(elapsed).toBeLessThan(3000);
    expect(woke).toMatchObject({ state: "running", wake_count: 1, boot_count: 2 });
    const j = (await (await fetch(guestUrl(vm, "/after"))).json()) as any;
    expect(j).toMatchObject({ vm_id: vm.id, boot: 2, path: "/after" });

    await sim.stop(vm.id);
    expect(await tryConnect(vm.guest_ip!, 8080)).toBe("ECONNREFUSED");
    await sim.start(vm.id);
    expect(((await (await fetch(guestUrl(vm))).json()) as any).boot).toBe(3);
    expect(sim.getVm(vm.id)).toMatchObject({ wake_count: 2, boot_count: 3 });
    await sim.deleteVm(vm.id);
    expect(await tryConnect(vm.guest_ip!, 8080)).toBe("ECONNREFUSED");
  });

  it("echoes WebSocket messages on /ws and closes them on snapshot", async () => {
    const vm = await sim.createVm({ restore_ms: 0 });
    const ws = new WebSocket(`ws://${vm.guest_ip}:8080/ws`);
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    const got: string[] = [];
    ws.on("message", (d) => got.push(d.toString()));
    ws.send("one");
    ws.send("two");
    await expect.poll(() => got).toEqual(["one", "two"]);
    const closed = new Promise<number>((resolve) => ws.once("close", resolve));
    await sim.snapshot(vm.id);
    expect(await closed).toBe(1006);
    expect((await fetch(guestUrl(vm, "/ws")).catch(() => undefined))?.status).toBeUndefined();
    await sim.restore(vm.id);
    expect((await fetch(guestUrl(vm, "/ws"))).status).toBe(426);
    await sim.deleteVm(vm.id);
  });

  it("streams /stream chunks over time, and honours /sleep and /status", async () => {
    const vm = await sim.createVm();
    const res = await fetch(guestUrl(vm, "/stream?n=4&ms=150"));
    expect(res.status).toBe(200);
    expect(res.headers.get("transfer-encoding")).toBe("chunked");
    const arrivals: number[] = [];
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of res.body!) {
      arrivals.push(performance.now());
      text += decoder.decode(chunk, { stream: true });
    }
    const lines = text.trim().split("\n").map((l) => JSON.parse(l));
    expect(lines.map((l) => l.chunk)).toEqual([0, 1, 2, 3]);
    expect(lines[0]).toMatchObject({ vm_id: vm.id, boot: 1, of: 4 });
    expect(arrivals.length).toBeGreaterThanOrEqual(3); // flushed separately, not buffered into one
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThanOrEqual(350);

    const t0 = performance.now();
    const slept = await fetch(guestUrl(vm, "/sleep?ms=250"));
    expect(performance.now() - t0).toBeGreaterThanOrEqual(240);
    expect(((await slept.json()) as any).path).toBe("/sleep");

    const teapot = await fetch(guestUrl(vm, "/status/418"));
    expect(teapot.status).toBe(418);
    expect(((await teapot.json()) as any).vm_id).toBe(vm.id);
    expect((await fetch(guestUrl(vm, "/status/204"))).status).toBe(204);
    await sim.deleteVm(vm.id);
  });

  it("allocates unique IPs, reuses freed ones, and never collides with another simulator", async () => {
    const a = await sim.createVm();
    const b = await sim.createVm();
    expect(a.guest_ip).not.toBe(b.guest_ip);
    await sim.deleteVm(a.id);
    const c = await sim.createVm();
    expect(c.guest_ip).toBe(a.guest_ip);

    // A second simulator on the same prefix skips addresses the first one holds, even while
    // the first one's VM is asleep (its TCP ports closed).
    await sim.snapshot(b.id);
    const other = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0 });
    try {
      const d = await other.createVm();
      expect([b.guest_ip, c.guest_ip]).not.toContain(d.guest_ip);
      expect((await sim.restore(b.id)).state).toBe("running");
    } finally {
      await other.close();
    }
    await sim.deleteVm(b.id);
    await sim.deleteVm(c.id);
  });
});

describe("simulator as a VmPlatform", () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: 200 });
  });
  afterAll(() => sim.close());

  it("get/list return VM JSON; get of an unknown id is undefined", async () => {
    const vm = await sim.createVm();
    expect(sim.platform.kind).toBe("simulator");
    expect(await sim.platform.get(vm.id)).toEqual(vm);
    expect(await sim.platform.get("vm_unknown")).toBeUndefined();
    expect((await sim.platform.list()).map((v) => v.id)).toContain(vm.id);
    await sim.deleteVm(vm.id);
  });

  it("wakes snapshotted and stopped VMs; concurrent wakes share one restore", async () => {
    const vm = await sim.createVm();
    expect((await sim.platform.wake(vm.id)).state).toBe("running"); // already running: as is
    expect(sim.getVm(vm.id)?.wake_count).toBe(0);

    await sim.snapshot(vm.id);
    const woken = await Promise.all(Array.from({ length: 10 }, () => sim.platform.wake(vm.id)));
    expect(woken.every((v) => v.state === "running")).toBe(true);
    expect(sim.getVm(vm.id)).toMatchObject({ state: "running", wake_count: 1, boot_count: 2 });

    await sim.stop(vm.id);
    expect(await sim.platform.wake(vm.id)).toMatchObject({ state: "running", wake_count: 2 });
    expect((await fetch(guestUrl(vm))).status).toBe(200);
    await sim.deleteVm(vm.id);
  });

  it("maps failures to WakeError", async () => {
    const vm = await sim.createVm({ restore_ms: 50 });
    await expect(sim.platform.wake("vm_unknown")).rejects.toMatchObject({ name: "WakeError", reason: "not_found" });

    await sim.snapshot(vm.id);
    sim.failNextRestores(vm.id, 1);
    const both = await Promise.allSettled([sim.platform.wake(vm.id), sim.platform.wake(vm.id)]);
    for (const r of both) {
      expect(r.status).toBe("rejected");
      const err = (r as PromiseRejectedResult).reason;
      expect(err).toBeInstanceOf(WakeError);
      expect(err).toMatchObject({ reason: "failed", message: "failed to wake vm: restore failed: injected failure" });
    }
    expect(sim.getVm(vm.id)?.state).toBe("snapshotted");

    const slow = await sim.createVm({ restore_ms: 1000 });
    await sim.snapshot(slow.id);
    const t0 = performance.now();
    await expect(sim.platform.wake(slow.id, { timeoutMs: 100 })).rejects.toMatchObject({ reason: "timeout" });
    expect(performance.now() - t0).toBeLessThan(900);
    // The restore itself goes on; a later wake joins it.
    expect((await sim.platform.wake(slow.id)).state).toBe("running");
    expect(sim.getVm(slow.id)?.wake_count).toBe(1);
    await sim.deleteVm(vm.id);
    await sim.deleteVm(slow.id);
  });
});

describe("simulator persistence", () => {
  const dir = mkdtempSync(join(tmpdir(), "hatch-sim-"));
  const stateFile = join(dir, "nested", "vms.json");
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("reloads VMs (ids, ips, states, counters) and reopens running ones", async () => {
    const first = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0, stateFile });
    const running = await first.createVm({ guest_ports: [8080, 8081] });
    const asleep = await first.createVm({ restore_ms: 120 });
    const stopped = await first.createVm({ id: "vm-fixed-id", ownerKey: "key-x" });
    await first.snapshot(running.id);
    await first.restore(running.id);
    await first.snapshot(asleep.id);
    await first.stop(stopped.id);
    const saved = JSON.parse(readFileSync(stateFile, "utf8"));
    expect(saved.vms.map((v: SimVm) => v.id)).toEqual([running.id, asleep.id, "vm-fixed-id"]);
    await first.close();
    expect(await tryConnect(running.guest_ip!, 8080)).toBe("ECONNREFUSED");

    const second = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0, stateFile });
    try {
      expect(second.getVm(running.id)).toMatchObject({
        state: "running",
        guest_ip: running.guest_ip,
        guest_mac: running.guest_mac,
        guest_ports: [8080, 8081],
        wake_count: 1,
        boot_count: 3,
      });
      expect(second.getVm(asleep.id)).toMatchObject({ state: "snapshotted", guest_ip: asleep.guest_ip, restore_ms: 120, boot_count: 1 });
      expect(second.getVm("vm-fixed-id")).toMatchObject({ state: "stopped" });
      expect(await second.platform.get("vm-fixed-id", { userKey: "key-y" })).toBeUndefined();
      expect(((await (await fetch(guestUrl(running, "/", 8081))).json()) as any).boot).toBe(3);
      expect(await tryConnect(asleep.guest_ip!, 8080)).toBe("ECONNREFUSED");
      expect((await second.restore(asleep.id)).state).toBe("running");
      // A new VM does not take a reloaded VM's address.
      const fresh = await second.createVm();
      expect([running.guest_ip, asleep.guest_ip, stopped.guest_ip]).not.toContain(fresh.guest_ip);
    } finally {
      await second.close();
    }
  });
});
