import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { get } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  createSimulator,
  GuestTraffic,
  MAX_RID_LENGTH,
  MAX_SNAPSHOTS,
  SimulatorError,
  type Simulator,
  type SimVm,
} from "../src/vms/simulator/index.ts";

// Not used by any other test file, so parallel files never share guest addresses.
const PREFIX = "127.0.44";

const guestUrl = (vm: SimVm, path = "/", port = vm.guest_ports[0]!) => `http://${vm.guest_ip}:${port}${path}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** REST call against the simulator's app, in-process. */
async function call(sim: Simulator, method: string, path: string, headers: Record<string, string> = {}) {
  const res = await sim.app.request(path, { method, headers });
  return { status: res.status, body: (await res.json()) as any, allow: res.headers.get("allow") };
}

/**
 * Sends a GET to the guest on a fresh connection and drains the answer. Not fetch: its pool may
 * reuse a keep-alive socket to an address a deleted VM held and a new VM got, which then fails.
 */
function hit(vm: SimVm, path: string, port?: number): Promise<number> {
  return new Promise((resolve, reject) => {
    get(guestUrl(vm, path, port), { agent: false }, (res) => {
      res.resume();
      res.once("end", () => resolve(res.statusCode!));
    }).once("error", reject);
  });
}

interface Tick {
  event: string;
  data: { i: number; vm_id: string; boot: number };
}

/** Parses complete `event:`/`data:` blocks out of an SSE text. */
function parseEvents(text: string): Tick[] {
  return text
    .split("\n\n")
    .filter((block) => block.trim() !== "")
    .map((block) => {
      const lines = block.split("\n");
      const event = lines.find((l) => l.startsWith("event: "))!.slice("event: ".length);
      const data = JSON.parse(lines.find((l) => l.startsWith("data: "))!.slice("data: ".length));
      return { event, data };
    });
}

const activeTimeouts = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;

describe("simulator: request counts per rid", () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: 50 });
  });
  afterAll(() => sim.close());

  it("counts per rid across two ports and a snapshot/restore; requests without rid are not counted", async () => {
    const vm = await sim.createVm({ guest_ports: [8080, 3000] });
    const other = await sim.createVm();
    expect(await hit(vm, "/a?rid=r1")).toBe(200);
    expect(await hit(vm, "/a?rid=r1", 3000)).toBe(200);
    expect(await hit(vm, "/status/503?rid=r2", 3000)).toBe(503);
    expect(await hit(vm, "/no-rid")).toBe(200);
    expect(await hit(other, "/a?rid=r1")).toBe(200);
    expect(sim.requestCounts(vm.id)).toEqual({ r1: 2, r2: 1 });

    await sim.snapshot(vm.id);
    expect(sim.requestCounts(vm.id)).toEqual({ r1: 2, r2: 1 });
    await sim.restore(vm.id);
    expect(await hit(vm, "/after?rid=r1")).toBe(200);
    expect(await hit(vm, "/after?rid=r3&rid=ignored", 3000)).toBe(200);

    expect(sim.requestCounts(vm.id)).toEqual({ r1: 3, r2: 1, r3: 1 });
    expect(sim.requestCounts(other.id)).toEqual({ r1: 1 });
    expect(await call(sim, "GET", `/vms/${vm.id}/requests`)).toEqual({
      status: 200,
      body: { vm_id: vm.id, counts: { r1: 3, r2: 1, r3: 1 } },
      allow: null,
    });
    await sim.deleteVm(vm.id);
    await sim.deleteVm(other.id);
  });

  it("counts a request when its head arrives, even if the body or the answer never completes", async () => {
    const vm = await sim.createVm();
    // A head with a promised body that never fully arrives.
    const s = connect({ host: vm.guest_ip, port: 8080 });
    await new Promise((resolve) => s.once("connect", resolve));
    s.write("POST /upload?rid=partial HTTP/1.1\r\nHost: guest\r\nContent-Length: 100\r\n\r\nabc");
    await expect.poll(() => sim.requestCounts(vm.id).partial).toBe(1);
    s.destroy();

    // An answer cut by the VM going to sleep.
    const cut = fetch(guestUrl(vm, "/sleep?ms=60000&rid=cut"));
    await expect.poll(() => sim.requestCounts(vm.id).cut).toBe(1);
    await sim.snapshot(vm.id);
    await expect(cut).rejects.toThrow();
    expect(sim.requestCounts(vm.id)).toEqual({ partial: 1, cut: 1 });
    await sim.deleteVm(vm.id);
  });

  it("counts WebSocket upgrades (accepted or not), not the messages on them", async () => {
    const vm = await sim.createVm();
    const ws = new WebSocket(`ws://${vm.guest_ip}:8080/ws?rid=ws1`);
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    const got: string[] = [];
    ws.on("message", (d) => got.push(d.toString()));
    ws.send("x");
    ws.send("y");
    await expect.poll(() => got).toEqual(["x", "y"]);
    ws.close();

    const refused = new WebSocket(`ws://${vm.guest_ip}:8080/elsewhere?rid=ws404`);
    const err = await new Promise<Error>((resolve) => refused.once("error", resolve));
    expect(err.message).toContain("404");
    expect(sim.requestCounts(vm.id)).toEqual({ ws1: 1, ws404: 1 });
    await sim.deleteVm(vm.id);
  });

  it("resets over REST; new requests count from zero", async () => {
    const vm = await sim.createVm();
    await hit(vm, "/?rid=a");
    await hit(vm, "/?rid=a");
    expect(await call(sim, "DELETE", `/vms/${vm.id}/requests`)).toEqual({ status: 200, body: { vm_id: vm.id, counts: {} }, allow: null });
    expect((await call(sim, "GET", `/vms/${vm.id}/requests`)).body).toEqual({ vm_id: vm.id, counts: {} });
    await hit(vm, "/?rid=a");
    expect(sim.requestCounts(vm.id)).toEqual({ a: 1 });
    sim.resetRequestCounts(vm.id);
    expect(sim.requestCounts(vm.id)).toEqual({});
    await sim.deleteVm(vm.id);
  });

  it("404 for unknown or foreign VMs, 405 with Allow for other methods", async () => {
    const mine = await sim.createVm({ ownerKey: "key-a" });
    await hit(mine, "/?rid=k");
    for (const method of ["GET", "DELETE"]) {
      expect(await call(sim, method, "/vms/vm_nope/requests")).toMatchObject({ status: 404, body: { error: "not found" } });
      expect(await call(sim, method, `/vms/${mine.id}/requests`, { authorization: "Bearer key-b" })).toMatchObject({
        status: 404,
        body: { error: "not found" },
      });
    }
    // The foreign DELETE reset nothing; the owner sees the count.
    expect((await call(sim, "GET", `/vms/${mine.id}/requests`, { authorization: "Bearer key-a" })).body.counts).toEqual({ k: 1 });
    expect(await call(sim, "PUT", `/vms/${mine.id}/requests`)).toEqual({ status: 405, body: { error: "method not allowed" }, allow: "GET, DELETE" });
    expect(() => sim.requestCounts("vm_nope")).toThrow(SimulatorError);
    await sim.deleteVm(mine.id);
    expect((await call(sim, "GET", `/vms/${mine.id}/requests`)).status).toBe(404);
  });

  it("bounds the table: new rids beyond the limit are refused, known ones keep counting, long ones are ignored", () => {
    const t = new GuestTraffic(3);
    const count = (q: string) => t.countRequest(new URL(`http://guest/${q}`));
    for (const rid of ["a", "b", "c", "d", "a", ""]) count(`?rid=${encodeURIComponent(rid)}`);
    expect(t.requestCounts()).toEqual({ a: 2, b: 1, c: 1 });
    t.resetRequestCounts();
    count(`?rid=${"x".repeat(MAX_RID_LENGTH + 1)}`);
    count(`?rid=${"x".repeat(MAX_RID_LENGTH)}`);
    count("?rid=");
    count("?rid=__proto__");
    const counts = t.requestCounts();
    expect(counts).toEqual({ ["x".repeat(MAX_RID_LENGTH)]: 1, "": 1, ["__proto__"]: 1 });
    expect(Object.getPrototypeOf(counts)).toBe(Object.prototype);
  });
});

describe("simulator: /events (server-sent events)", () => {
  let sim: Simulator;
  let vm: SimVm;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0 });
    vm = await sim.createVm();
  });
  afterAll(() => sim.close());

  it("sends n tick events ms apart with SSE headers, then ends", async () => {
    const t0 = performance.now();
    const res = await fetch(guestUrl(vm, "/events?ms=120&n=3&rid=sse"));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    expect(res.headers.get("cache-control")).toBe("no-store");
    const arrivals: number[] = [];
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of res.body!) {
      arrivals.push(performance.now());
      text += decoder.decode(chunk, { stream: true });
    }
    expect(text.endsWith("\n\n")).toBe(true);
    expect(parseEvents(text)).toEqual([0, 1, 2].map((i) => ({ event: "tick", data: { i, vm_id: vm.id, boot: 1 } })));
    expect(text.startsWith(`event: tick\ndata: {"i":0,"vm_id":"${vm.id}","boot":1}\n\n`)).toBe(true);
    expect(arrivals.length).toBeGreaterThanOrEqual(2); // written over time, not in one piece
    expect(arrivals.at(-1)! - t0).toBeGreaterThanOrEqual(230);
    expect(sim.requestCounts(vm.id).sse).toBe(1);
  });

  it("n=0 ends right after the head; without n it keeps ticking until the client leaves", async () => {
    const empty = await fetch(guestUrl(vm, "/events?n=0&ms=50000"));
    expect(empty.status).toBe(200);
    expect(await empty.text()).toBe("");

    const res = await fetch(guestUrl(vm, "/events?ms=30"));
    const reader = res.body!.getReader();
    let text = "";
    while (parseEvents(text.slice(0, text.lastIndexOf("\n\n") + 2)).length < 4) {
      const { value, done } = await reader.read();
      expect(done).toBe(false);
      text += new TextDecoder().decode(value);
    }
    expect(parseEvents(text.slice(0, text.lastIndexOf("\n\n") + 2)).slice(0, 4).map((e) => e.data.i)).toEqual([0, 1, 2, 3]);
    await reader.cancel();
  });

  it("clears its timers when clients go away", async () => {
    const streams = await Promise.all(Array.from({ length: 20 }, () => fetch(guestUrl(vm, "/events?ms=60000"))));
    expect(streams.every((r) => r.status === 200)).toBe(true);
    // Each open stream waits on one timer for its next tick (other timers in the process come and go).
    await expect.poll(activeTimeouts).toBeGreaterThanOrEqual(20);
    const peak = activeTimeouts();
    await Promise.all(streams.map((r) => r.body!.cancel()));
    let now = activeTimeouts();
    for (let i = 0; i < 100 && now > peak - 18; i++) {
      await sleep(20);
      now = activeTimeouts();
    }
    expect(now).toBeLessThanOrEqual(peak - 18);
  });

  it("ms=0 without n is an idle stream: the head at once, then nothing until the VM sleeps", async () => {
    const idleVm = await sim.createVm();
    const t0 = performance.now();
    const res = await fetch(guestUrl(idleVm, "/events?ms=0"));
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const reader = res.body!.getReader();
    const first = reader.read();
    first.catch(() => undefined);
    const outcome = await Promise.race([first.then(() => "data", () => "error"), sleep(300).then(() => "still open")]);
    expect(outcome).toBe("still open");

    await sim.snapshot(idleVm.id);
    await expect(first).rejects.toThrow("terminated");
    await sim.restore(idleVm.id);
    // After the wake, the stream says which boot serves it.
    const again = await fetch(guestUrl(idleVm, "/events?ms=0&n=1"));
    expect(parseEvents(await again.text())).toEqual([{ event: "tick", data: { i: 0, vm_id: idleVm.id, boot: 2 } }]);
    await sim.deleteVm(idleVm.id);
  });
});

describe("simulator: Hatch's snapshots, metrics and exec calls", () => {
  let sim: Simulator;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0 });
  });
  afterAll(() => sim.close());

  it("lists every snapshot in order, as POST /snapshot answered it", async () => {
    const vm = await sim.createVm();
    expect(await call(sim, "GET", `/vms/${vm.id}/snapshots`)).toEqual({ status: 200, body: [], allow: null });
    const first = await sim.app.request(`/vms/${vm.id}/snapshot`, { method: "POST" });
    expect(first.status).toBe(201);
    const s1 = await first.json();
    expect(s1).toEqual({ id: expect.stringMatching(/^snap_[a-z0-9]{12}$/), vm_id: vm.id, created_at: sim.getVm(vm.id)!.updated_at });
    expect((await call(sim, "GET", `/vms/${vm.id}/snapshots`)).body).toEqual([s1]);

    await sim.restore(vm.id);
    const s2 = await (await sim.app.request(`/vms/${vm.id}/snapshot`, { method: "POST" })).json();
    await sim.restore(vm.id);
    // The platform's sleep snapshots too; a stop does not.
    await sim.platform.sleep(vm.id, "snapshot");
    await sim.stop(vm.id);
    const listed = (await call(sim, "GET", `/vms/${vm.id}/snapshots`)).body;
    expect(listed).toHaveLength(3);
    expect(listed.slice(0, 2)).toEqual([s1, s2]);
    expect(new Set(listed.map((s: { id: string }) => s.id)).size).toBe(3);
    expect(sim.snapshots(vm.id)).toEqual(listed);
    // The VM's own JSON does not carry them.
    expect(sim.getVm(vm.id)).not.toHaveProperty("snapshots");
    await sim.deleteVm(vm.id);
  });

  it(`keeps the latest ${MAX_SNAPSHOTS} snapshots (with no snapshot limit)`, async () => {
    const unlimited = await createSimulator({ ipPrefix: "127.0.46", restoreMs: 0, snapshotLimit: 0 });
    const sim = unlimited;
    const vm = await sim.createVm();
    const taken: string[] = [];
    for (let i = 0; i < MAX_SNAPSHOTS + 2; i++) {
      const r = await sim.app.request(`/vms/${vm.id}/snapshot`, { method: "POST" });
      taken.push(((await r.json()) as { id: string }).id);
      await sim.restore(vm.id);
    }
    expect(sim.snapshots(vm.id).map((s) => s.id)).toEqual(taken.slice(2));
    await unlimited.close();
  });

  it("metrics: Hatch's shape, uptime since the last boot while running, 0 asleep, bytes across sleeps", async () => {
    const vm = await sim.createVm();
    await sleep(250);
    const r = await call(sim, "GET", `/vms/${vm.id}/metrics`);
    expect(r.status).toBe(200);
    expect(r.body).toEqual({
      vm_id: vm.id,
      state: "running",
      vcpu_count: 1,
      mem_mib: 256,
      uptime_seconds: expect.any(Number),
      net: { rx_bytes: expect.any(Number), tx_bytes: expect.any(Number), rx_packets: 0, tx_packets: 0 },
      block: { read_bytes: 0, write_bytes: 0 },
      vcpu: { cpu_time_micros: 0, utilization_percent: 0 },
      raw: {},
    });
    expect(r.body.uptime_seconds).toBeGreaterThanOrEqual(0.24);
    expect(r.body.uptime_seconds).toBeLessThan(10);
    const before = r.body.net;

    const body = Buffer.alloc(5000, 1);
    const res = await fetch(guestUrl(vm, "/upload"), { method: "POST", body });
    const answer = await res.arrayBuffer();
    await expect.poll(() => sim.metrics(vm.id).net.rx_bytes).toBeGreaterThanOrEqual(before.rx_bytes + body.length);
    expect(sim.metrics(vm.id).net.tx_bytes).toBeGreaterThanOrEqual(before.tx_bytes + answer.byteLength);

    await sim.snapshot(vm.id);
    const asleep = sim.metrics(vm.id);
    expect(asleep).toMatchObject({ state: "snapshotted", uptime_seconds: 0 });
    expect(asleep.net.rx_bytes).toBeGreaterThanOrEqual(before.rx_bytes + body.length);
    await sim.restore(vm.id);
    const woke = sim.metrics(vm.id);
    expect(woke.state).toBe("running");
    expect(woke.uptime_seconds).toBeLessThan(r.body.uptime_seconds); // counted from the restore
    expect(woke.net.rx_bytes).toBe(asleep.net.rx_bytes);
    await sim.stop(vm.id);
    expect(sim.metrics(vm.id)).toMatchObject({ state: "stopped", uptime_seconds: 0 });
    await sim.deleteVm(vm.id);
  });

  it("exec answers 501; 404 for unknown or foreign VMs and 405 with Allow on every new path", async () => {
    const vm = await sim.createVm({ ownerKey: "key-a" });
    expect(await call(sim, "POST", `/vms/${vm.id}/exec`)).toEqual({
      status: 501,
      body: { error: "exec is not supported by the simulator" },
      allow: null,
    });
    for (const [method, path] of [
      ["GET", "snapshots"],
      ["GET", "metrics"],
      ["POST", "exec"],
    ] as const) {
      expect(await call(sim, method, `/vms/vm_nope/${path}`)).toMatchObject({ status: 404, body: { error: "not found" } });
      expect(await call(sim, method, `/vms/${vm.id}/${path}`, { "x-api-key": "key-b" })).toMatchObject({ status: 404, body: { error: "not found" } });
      expect((await call(sim, method, `/vms/${vm.id}/${path}`, { "x-api-key": "key-a" })).status).not.toBe(404);
    }
    expect(await call(sim, "POST", `/vms/${vm.id}/snapshots`)).toEqual({ status: 405, body: { error: "method not allowed" }, allow: "GET" });
    expect(await call(sim, "DELETE", `/vms/${vm.id}/metrics`)).toEqual({ status: 405, body: { error: "method not allowed" }, allow: "GET" });
    expect(await call(sim, "GET", `/vms/${vm.id}/exec`)).toEqual({ status: 405, body: { error: "method not allowed" }, allow: "POST" });
    expect(() => sim.metrics("vm_nope")).toThrow(SimulatorError);
    expect(() => sim.snapshots("vm_nope")).toThrow(SimulatorError);
    await sim.deleteVm(vm.id);
  });
});

describe("simulator: snapshots in the state file", () => {
  const dir = mkdtempSync(join(tmpdir(), "hatch-sim-snaps-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("reloads the snapshot list; request counts start empty", async () => {
    const stateFile = join(dir, "vms.json");
    const first = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0, stateFile });
    const vm = await first.createVm();
    await hit(vm, "/?rid=before");
    await first.snapshot(vm.id);
    await first.restore(vm.id);
    await first.snapshot(vm.id);
    const snaps = first.snapshots(vm.id);
    expect(snaps).toHaveLength(2);
    await first.close();

    const second = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0, stateFile });
    try {
      expect(second.snapshots(vm.id)).toEqual(snaps);
      expect(second.requestCounts(vm.id)).toEqual({});
    } finally {
      await second.close();
    }
  });

  it("reads a file written before snapshots were listed as having none", async () => {
    const stateFile = join(dir, "old.json");
    const stamp = new Date().toISOString();
    const rec = {
      id: "vm-old",
      image_id: "sim",
      state: "stopped",
      vcpu_count: 1,
      mem_mib: 256,
      guest_ip: `${PREFIX}.200`,
      guest_mac: "06:00:7f:00:2c:c8",
      ssh_port: 20_000,
      enable_network: true,
      created_at: stamp,
      updated_at: stamp,
      guest_ports: [8080],
      restore_ms_override: null,
      wake_count: 0,
      boot_count: 1,
      owner: null,
      prev_state: null,
    };
    writeFileSync(stateFile, JSON.stringify({ version: 1, vms: [rec] }));
    const sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0, stateFile });
    try {
      expect(sim.snapshots("vm-old")).toEqual([]);
      expect(sim.getVm("vm-old")).toMatchObject({ state: "stopped" });
    } finally {
      await sim.close();
    }
  });
});

describe("simulator: Hatch's tenancy (HATCH_SIM_USERS)", () => {
  let sim: Simulator;
  const users = new Map([
    ["ka", "alice"],
    ["kb", "bob"],
  ]);
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: "127.0.49", restoreMs: 0, users });
  });
  afterAll(() => sim.close());
  const as = (key: string) => ({ authorization: `Bearer ${key}` });

  it("every call needs a known key; a VM belongs to its creator's user; another user's VM is 404", async () => {
    expect(await call(sim, "GET", "/vms")).toMatchObject({ status: 401, body: { error: "missing api key" } });
    expect(await call(sim, "POST", "/vms", as("nobody"))).toMatchObject({ status: 401, body: { error: "invalid api key" } });
    expect(await call(sim, "GET", "/vms", { authorization: "Basic x" })).toMatchObject({ status: 401, body: { error: "invalid authorization header" } });

    const alices = await call(sim, "POST", "/vms", as("ka"));
    expect(alices.status).toBe(201);
    const id = alices.body.id as string;
    expect((await call(sim, "GET", "/vms", as("ka"))).body.map((v: SimVm) => v.id)).toEqual([id]);
    expect((await call(sim, "GET", "/vms", as("kb"))).body).toEqual([]);
    for (const [method, path] of [
      ["GET", `/vms/${id}`],
      ["POST", `/vms/${id}/snapshot`],
      ["POST", `/vms/${id}/stop`],
      ["DELETE", `/vms/${id}`],
      ["GET", `/vms/${id}/requests`],
    ] as const) {
      expect(await call(sim, method, path, as("kb")), `${method} ${path} as bob`).toMatchObject({ status: 404, body: { error: "not found" } });
    }
    expect((await call(sim, "GET", `/vms/${id}`, { "x-api-key": "ka" })).body.state).toBe("running");
    // The owner is the user, not the key: a second key of Alice's sees her VM.
    users.set("ka2", "alice");
    expect((await call(sim, "GET", `/vms/${id}`, as("ka2"))).status).toBe(200);
    users.delete("ka2");
  });

  it("the in-process platform acts for the service key it is given; without one it is refused like a Hatch client", async () => {
    const vm = await sim.createVm({ ownerKey: "kb" });
    await expect(sim.platform.list()).rejects.toMatchObject({ name: "CredentialRejectedError" });
    await expect(sim.platform.wake(vm.id)).rejects.toMatchObject({ name: "CredentialRejectedError" });
    const bob = sim.platformAs("kb");
    expect((await bob.list()).map((v) => v.id)).toContain(vm.id);
    expect((await bob.sleep(vm.id, "snapshot")).state).toBe("snapshotted");
    expect(await sim.platformAs("ka").get(vm.id)).toBeUndefined();
    await expect(sim.platformAs("ka").wake(vm.id)).rejects.toMatchObject({ reason: "not_found" });
    expect((await bob.wake(vm.id)).state).toBe("running");
    await sim.deleteVm(vm.id);
  });
});
