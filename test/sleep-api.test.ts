/**
 * POST /vms/{id}/sleep and GET /vms/{id}/activity on the embedded front (no Traefik): every answer
 * of the contract, requests held across an API sleep, an idle sleep cancelled by a request, a drain
 * that times out instead of cutting a WebSocket, and the one log line per sleep.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { createLogger } from "../src/log.ts";
import type { Stack } from "../src/stack.ts";
import { call } from "./helpers/wake-fixture.ts";
import { addRouteVia, api, stackConfig, stackDatabase, stackPorts, standaloneSimulator, startSleepStack } from "./helpers/stack.ts";
import { waitFor } from "./helpers/wait.ts";

describe("sleep API on the embedded proxy (pglite)", () => {
  let simulator: Awaited<ReturnType<typeof standaloneSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  let stack: Stack;
  const lines: any[] = [];
  let n = 0;

  const sim = () => simulator.sim;
  const proxyCall = (host: string, path = "/") => call(stack.proxy!.url, { host: `${host}.hatch.local`, path });
  const vmWithRoute = async (autoWake = true) => {
    const vm = await sim().createVm();
    const sub = `sleepy${++n}`;
    if (autoWake) await addRouteVia(stack, vm.id, sub);
    else expect((await api(stack, "POST", `/vms/${vm.id}/routes`, { subdomain: sub, target_port: 8080, auto_wake: false })).status).toBe(201);
    return { vm, sub };
  };
  const openSocket = async (sub: string) => {
    const ws = new WebSocket(`${stack.proxy!.url.replace("http", "ws")}/ws`, { headers: { host: `${sub}.hatch.local` } });
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
    return ws;
  };

  beforeAll(async () => {
    simulator = await standaloneSimulator("127.0.72", 150);
    db = await stackDatabase("pglite");
    const log = createLogger("info", {}, (l) => lines.push(JSON.parse(l)));
    const config = stackConfig(await stackPorts(), { ...db.overrides, hatchApiUrl: simulator.url, idleTimeoutMs: 600_000, idleDrainTimeoutMs: 1500 });
    stack = await startSleepStack(config, "embedded", { minDrainMs: 300 }, log);
  });
  afterAll(async () => {
    await stack?.close();
    await simulator?.close();
    await db?.drop();
  });

  it("answers Hatch-style errors: 401 without a key, 404 for an unknown VM, 400 for a bad body, 405 for a wrong method", async () => {
    const { vm } = await vmWithRoute();
    const anon = await fetch(`${stack.api!.url}/vms/${vm.id}/sleep`, { method: "POST" });
    expect([anon.status, await anon.json()]).toMatchObject([401, { error: "missing api key" }]);
    expect((await fetch(`${stack.api!.url}/vms/${vm.id}/activity`)).status).toBe(401);
    expect(await api(stack, "POST", "/vms/vm_nope/sleep")).toMatchObject({ status: 404, json: { error: "not found" } });
    expect(await api(stack, "GET", "/vms/vm_nope/activity")).toMatchObject({ status: 404, json: { error: "not found" } });
    expect(await api(stack, "POST", `/vms/${vm.id}/sleep`, { action: "hibernate" })).toMatchObject({ status: 400, json: { error: 'action must be "snapshot" or "stop"' } });
    expect(await api(stack, "POST", `/vms/${vm.id}/sleep`, { force: true })).toMatchObject({ status: 400, json: { error: 'unknown field "force"' } });
    expect(await api(stack, "POST", `/vms/${vm.id}/sleep`, [1])).toMatchObject({ status: 400, json: { error: "request body must be a JSON object" } });
    const wrong = await fetch(`${stack.api!.url}/vms/${vm.id}/sleep`, { headers: { authorization: "Bearer sleep-test-key" } });
    expect([wrong.status, wrong.headers.get("allow")]).toEqual([405, "POST"]);
    // Nothing above touched the VM.
    expect(sim().getVm(vm.id)!.state).toBe("running");
  });

  it("puts a VM to sleep (snapshot or stop) and answers with it; 409 when it is not running; the next request wakes it", async () => {
    const { vm, sub } = await vmWithRoute();
    const r = await api(stack, "POST", `/vms/${vm.id}/sleep`);
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ id: vm.id, state: "snapshotted", guest_ip: vm.guest_ip });
    expect(sim().getVm(vm.id)!.state).toBe("snapshotted");
    expect(await api(stack, "POST", `/vms/${vm.id}/sleep`)).toMatchObject({ status: 409, json: { error: "vm is not running (current state: snapshotted)", code: "not_running" } });
    const woken = await proxyCall(sub, "/after");
    expect([woken.status, woken.headers["x-hatch-cold-start"]]).toEqual([200, "1"]);
    const stopped = await api(stack, "POST", `/vms/${vm.id}/sleep`, { action: "stop" });
    expect([stopped.status, stopped.json.state]).toEqual([200, "stopped"]);
    expect((await proxyCall(sub)).status).toBe(200);
    expect(sim().getVm(vm.id)!.state).toBe("running");
  });

  it("an API sleep waits for an open WebSocket; a second sleep is a 409; requests meanwhile are held and served after the wake", async () => {
    const { vm, sub } = await vmWithRoute();
    const ws = await openSocket(sub);
    const first = api(stack, "POST", `/vms/${vm.id}/sleep`);
    await waitFor(async () => (await api(stack, "GET", `/vms/${vm.id}/activity`)).json.sleep?.phase === "draining", "the drain to start");
    const second = await api(stack, "POST", `/vms/${vm.id}/sleep`);
    expect(second.status).toBe(409);
    expect(second.json.error).toMatch(/^a sleep of this vm is already under way \(api, draining since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$/);
    // Held (not forwarded to the VM about to sleep, not cancelling the sleep).
    const held = proxyCall(sub, "/held");
    await new Promise((r) => setTimeout(r, 200));
    expect(sim().getVm(vm.id)!.state).toBe("running");
    ws.close();
    expect((await first).status).toBe(200);
    const answer = await held;
    expect([answer.status, answer.json().path, answer.headers["x-hatch-cold-start"]]).toEqual([200, "/held", "1"]);
    expect(sim().getVm(vm.id)!.wake_count).toBe(1);
  });

  it("cancels a drain that does not finish within HATCH_IDLE_DRAIN_TIMEOUT instead of cutting the WebSocket", async () => {
    const { vm, sub } = await vmWithRoute();
    const ws = await openSocket(sub);
    const r = await api(stack, "POST", `/vms/${vm.id}/sleep`);
    expect(r).toMatchObject({ status: 409, json: { code: "sleep_cancelled", error: "sleep cancelled: drain did not finish within 1.5s (HATCH_IDLE_DRAIN_TIMEOUT): 1 request or connection still open" } });
    expect(sim().getVm(vm.id)!.state).toBe("running");
    ws.send("alive");
    expect(String(await new Promise((res) => ws.once("message", res)))).toBe("alive");
    ws.close();
    // And once it is gone, a sleep goes through.
    await waitFor(async () => (await api(stack, "GET", `/vms/${vm.id}/activity`)).json.open_connections === 0, "the socket to close");
    expect((await api(stack, "POST", `/vms/${vm.id}/sleep`)).status).toBe(200);
  });

  it("an idle sleep is cancelled by a request that arrives while it drains; the request is served by the running VM", async () => {
    const { vm, sub } = await vmWithRoute();
    const slow = stack.sleeper!.withOptions({ minDrainMs: 1500 });
    const sleeping = slow.sleep(vm.id, "idle", { idleForMs: 60_000 });
    await waitFor(async () => (await api(stack, "GET", `/vms/${vm.id}/activity`)).json.sleep?.phase === "draining", "the drain to start");
    const during = await proxyCall(sub, "/during");
    expect([during.status, during.headers["x-hatch-cold-start"]]).toEqual([200, undefined]);
    expect(await sleeping).toMatchObject({ outcome: "cancelled", why: "a request arrived" });
    expect(sim().getVm(vm.id)!).toMatchObject({ state: "running", wake_count: 0 });
    expect((await api(stack, "GET", `/vms/${vm.id}/activity`)).json.sleep).toBeNull();
  });

  it("a route without auto-wake: requests during an API drain still reach the running VM, and after the sleep get 503", async () => {
    const { vm, sub } = await vmWithRoute(false);
    const ws = await openSocket(sub);
    const sleeping = api(stack, "POST", `/vms/${vm.id}/sleep`);
    await waitFor(async () => (await api(stack, "GET", `/vms/${vm.id}/activity`)).json.sleep?.phase === "draining", "the drain to start");
    expect((await proxyCall(sub, "/during")).status).toBe(200);
    ws.close();
    expect((await sleeping).status).toBe(200);
    const after = await proxyCall(sub, "/after");
    expect([after.status, after.json()]).toEqual([503, { error: "vm is snapshotted and auto-wake is disabled" }]);
  });

  it("GET /activity says why a VM is or is not going to sleep", async () => {
    const before = Date.now();
    const { vm, sub } = await vmWithRoute();
    const fresh = (await api(stack, "GET", `/vms/${vm.id}/activity`)).json;
    expect(fresh).toMatchObject({ vm_id: vm.id, state: "running", last_activity_at: null, open_connections: 0, idle_timeout_s: 600, sleep: null });
    // Never reached: the clock runs from the route's creation.
    expect(Date.parse(fresh.idle_since)).toBeGreaterThanOrEqual(before - 1000);
    expect(Date.parse(fresh.sleeps_at) - Date.parse(fresh.idle_since)).toBe(600_000);
    await proxyCall(sub);
    const used = (await api(stack, "GET", `/vms/${vm.id}/activity`)).json;
    expect(Date.parse(used.last_activity_at)).toBeGreaterThanOrEqual(Date.parse(fresh.idle_since));
    expect(used.idle_since).toBe(used.last_activity_at);
    const ws = await openSocket(sub);
    expect((await api(stack, "GET", `/vms/${vm.id}/activity`)).json).toMatchObject({ open_connections: 1, sleeps_at: null });
    ws.close();
    await waitFor(async () => (await api(stack, "GET", `/vms/${vm.id}/activity`)).json.open_connections === 0, "the socket to close");
    const bare = await sim().createVm();
    expect((await api(stack, "GET", `/vms/${bare.id}/activity`)).json).toMatchObject({ last_activity_at: null, idle_since: null, sleeps_at: null });
  });

  it("logs one line per sleep with vm, reason, idle_for, drain_ms and outcome, and counts them", async () => {
    const sleeps = lines.filter((l) => l.msg === "vm sleep");
    expect(sleeps.length).toBeGreaterThanOrEqual(6);
    for (const l of sleeps) {
      expect(l).toMatchObject({ level: expect.stringMatching(/info|warn/), component: "sleep", reason: expect.stringMatching(/^(idle|api)$/), outcome: expect.stringMatching(/^(done|cancelled|failed)$/) });
      expect(typeof l.drain_ms).toBe("number");
    }
    expect(sleeps.find((l) => l.reason === "idle")).toMatchObject({ idle_for: "1m", outcome: "cancelled", why: "a request arrived" });
    const metrics = await (await fetch(`${stack.api!.url}/metrics`)).text();
    expect(metrics).toMatch(/hatch_sleeps_total\{reason="api",outcome="done"\} [4-9]/);
    expect(metrics).toMatch(/hatch_sleeps_total\{reason="api",outcome="cancelled"\} 1\n/);
    expect(metrics).toMatch(/hatch_sleep_drain_seconds_count\{outcome="done"\} \d/);
    // No per-VM label anywhere in the sleep metrics.
    expect(metrics.split("\n").filter((l) => l.startsWith("hatch_sleep") && /vm/.test(l))).toEqual([]);
  });
});
