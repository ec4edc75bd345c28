/**
 * Idle sleep through a real Traefik (and Postgres when available): activity from every path
 * (Traefik's direct routers, WebSockets and event streams through the sidecar), and activity that
 * survives a restart of hatch-proxy.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { request } from "node:http";
import { traefikBinary } from "./helpers/env.ts";
import { startSleepTraefik, type SleepTraefik } from "./helpers/sleep-traefik.ts";
import { addRouteVia, api } from "./helpers/stack.ts";
import { waitFor } from "./helpers/wait.ts";
import { simNetwork } from "./helpers/sim-network.ts";
import { DEFAULT_SIM_SNAPSHOT_MS } from "../src/vms/simulator/core.ts";

const bin = traefikBinary();

describe.skipIf(!bin)("idle sleep through a real Traefik", () => {
  let f: SleepTraefik;
  beforeAll(async () => {
    f = await startSleepTraefik(bin!, "127.0.77");
  });
  afterAll(async () => {
    await f?.close();
  });

  it("idle sleep from every path: a quiet VM sleeps within timeout + 2 intervals; busy, WebSocket and event-stream VMs stay up for 30 s; then they sleep too", async () => {
    await f.restart({ idleTimeoutMs: 3000 });
    const make = async (name: string) => {
      const vm = await f.simulator.sim.createVm();
      const route = await addRouteVia(f.stack, vm.id, name);
      return { vm, route, routeAt: Date.now() };
    };
    const [quiet, busy, ws, sse] = await Promise.all(["quiet", "busy", "socket", "events"].map(make));
    await waitFor(() => f.direct(busy!.route.id), "the busy route's direct router");
    // One request a second through Traefik's direct router: seen only in Traefik's counters.
    let stopBusy = false;
    const busyLoop = (async () => {
      while (!stopBusy) {
        await getThrough(f.traefik.entryPort, "busy.hatch.local", "/tick");
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    // An idle WebSocket and an idle event stream (nothing sent after the handshake / the head).
    const socket = new WebSocket(`ws://127.0.0.1:${f.traefik.entryPort}/ws`, { headers: { host: "socket.hatch.local" } });
    await new Promise((resolve, reject) => socket.once("open", resolve).once("error", reject));
    const events = await openEventStream(f.traefik.entryPort, "events.hatch.local");

    await waitFor(() => f.simulator.sim.getVm(quiet!.vm.id)!.state === "snapshotted", "the quiet VM to sleep", 10_000, 50);
    const quietSleptAfter = Date.now() - quiet!.routeAt;
    // Decided within the timeout and two checks; on the bridge the snapshot then pauses the VM first.
    expect(quietSleptAfter).toBeLessThanOrEqual(3000 + 2 * 1000 + 500 + (simNetwork === "bridge" ? DEFAULT_SIM_SNAPSHOT_MS : 0));

    const watchUntil = Date.now() + 30_000;
    while (Date.now() < watchUntil) {
      for (const v of [busy, ws, sse]) expect(f.simulator.sim.getVm(v!.vm.id)!.state, `${v!.route.subdomain} must not sleep`).toBe("running");
      await new Promise((r) => setTimeout(r, 250));
    }
    // Not kept up by a request cancelling each attempt: no idle sleep of them was even started.
    const during = await (await fetch(`${f.stack.api!.url}/metrics`)).text();
    expect(during).toMatch(/hatch_sleeps_total\{reason="idle",outcome="cancelled"\} 0\n/);
    expect(during).toMatch(/hatch_sleeps_total\{reason="idle",outcome="done"\} 1\n/);
    const activity = await api(f.stack, "GET", `/vms/${ws!.vm.id}/activity`);
    expect(activity.json).toMatchObject({ state: "running", open_connections: 1, sleeps_at: null, idle_timeout_s: 3 });
    // The WebSocket still echoes after 30 s: nothing cut it.
    socket.send("still here");
    expect(String(await new Promise((r) => socket.once("message", r)))).toBe("still here");

    stopBusy = true;
    await busyLoop;
    socket.close();
    events.close();
    const closedAt = Date.now();
    for (const v of [busy, ws, sse]) await waitFor(() => f.simulator.sim.getVm(v!.vm.id)!.state === "snapshotted", `${v!.route.subdomain} to sleep once idle`, 10_000, 50);
    expect(Date.now() - closedAt).toBeLessThanOrEqual(3000 + 2 * 1000 + 1500);
    // The simulator marks a VM snapshotted before the sleeper hears back and counts the sleep.
    await expect
      .poll(async () => (await fetch(`${f.stack.api!.url}/metrics`)).text(), { timeout: 3000, interval: 100 })
      .toMatch(/hatch_sleeps_total\{reason="idle",outcome="done"\} [4-9]/);
  }, 90_000);

  it("after a restart of hatch-proxy, a VM kept busy through Traefik is not put to sleep, and one idle from before is", async () => {
    const busyVm = await f.simulator.sim.createVm();
    const busyRoute = await addRouteVia(f.stack, busyVm.id, "survivor");
    const idleVm = await f.simulator.sim.createVm();
    await addRouteVia(f.stack, idleVm.id, "forgotten");
    await waitFor(() => f.direct(busyRoute.id), "the direct router");
    let stopBusy = false;
    const busyLoop = (async () => {
      while (!stopBusy) {
        await getThrough(f.traefik.entryPort, "survivor.hatch.local", "/tick");
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    // Down for longer than the idle timeout; Traefik keeps routing the running VM directly.
    await f.stopStack();
    await new Promise((r) => setTimeout(r, 4000));
    expect(f.simulator.sim.getVm(idleVm.id)!.state).toBe("running");
    await f.restart({ idleTimeoutMs: 3000 });
    const watchUntil = Date.now() + 10_000;
    let idleSlept = false;
    while (Date.now() < watchUntil) {
      expect(f.simulator.sim.getVm(busyVm.id)!.state, "the busy VM must stay up").toBe("running");
      idleSlept ||= f.simulator.sim.getVm(idleVm.id)!.state === "snapshotted";
      await new Promise((r) => setTimeout(r, 200));
    }
    stopBusy = true;
    await busyLoop;
    expect(idleSlept).toBe(true);
    const metrics = await (await fetch(`${f.stack.api!.url}/metrics`)).text();
    // Not even a sleep attempt that a request then cancelled.
    expect(metrics).toMatch(/hatch_sleeps_total\{reason="idle",outcome="cancelled"\} 0/);
  }, 60_000);
});

/** One GET through Traefik (a fresh connection); resolves with the status (0 on a network error). */
function getThrough(port: number, host: string, path: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ host: "127.0.0.1", port, path, headers: { host }, agent: false }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", () => resolve(0));
    req.end();
  });
}

/** Opens `/events?ms=0` (a stream that stays open and silent) with Accept: text/event-stream. */
function openEventStream(port: number, host: string): Promise<{ close(): void }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/events?ms=0", headers: { host, accept: "text/event-stream" }, agent: false }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`event stream answered ${res.statusCode}`));
      res.resume();
      resolve({ close: () => req.destroy() });
    });
    req.on("error", reject);
    req.end();
  });
}
