/**
 * Zero loss across sleeps through a real Traefik (and Postgres when available): sleeps asked
 * through the API lose nothing and run every request once; sleeps made on the platform behind
 * hatch-proxy's back fail no GET (sent back with a 307 once awake), and the other methods they fail
 * are counted.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { traefikBinary } from "./helpers/env.ts";
import { notOnce, percentile, startLoad } from "./helpers/load.ts";
import { simNetwork } from "./helpers/sim-network.ts";
import { startSleepTraefik, type SleepTraefik } from "./helpers/sleep-traefik.ts";
import { addRouteVia, api } from "./helpers/stack.ts";
import { waitFor } from "./helpers/wait.ts";

const bin = traefikBinary();

describe.skipIf(!bin)("sleeps through a real Traefik lose no request", () => {
  let f: SleepTraefik;
  beforeAll(async () => {
    f = await startSleepTraefik(bin!, "127.0.71");
  });
  afterAll(async () => {
    await f?.close();
  });

  it("20 sleeps through the API under continuous GETs and POSTs: every request answered 2xx, run exactly once, bodies intact", async () => {
    const vm = await f.simulator.sim.createVm();
    const route = await addRouteVia(f.stack, vm.id, "zeroloss");
    await waitFor(() => f.direct(route.id), "the direct router");
    const load = startLoad(f.traefik.entryPort, "zeroloss.hatch.local", { prefix: "api" });
    const drains: number[] = [];
    for (let i = 0; i < 20; i++) {
      // Every other sleep comes once the load runs on Traefik's direct path again (its pooled
      // connections to the VM in use), the others right after the wake, while it still goes through the sidecar.
      if (i % 2 === 0) await waitFor(() => f.direct(route.id), "the direct routers back after the wake");
      await new Promise((r) => setTimeout(r, 150));
      const started = Date.now();
      const r = await api(f.stack, "POST", `/vms/${vm.id}/sleep`);
      expect([r.status, r.json.state]).toEqual([200, "snapshotted"]);
      drains.push(Date.now() - started);
      // The load itself wakes it again.
      await waitFor(() => f.simulator.sim.getVm(vm.id)!.state === "running", "the load to wake the VM", 15_000);
    }
    const report = await load.stop();
    expect(report.failures).toEqual([]);
    expect(report.sent.size).toBeGreaterThan(400);
    expect(notOnce(report.sent, f.simulator.sim.requestCounts(vm.id))).toEqual([]);
    expect(f.simulator.sim.getVm(vm.id)!.wake_count).toBe(20);
    console.log(
      `[sleep-traefik] ${simNetwork} API sleeps: ${report.sent.size} requests, 0 failed, 20 sleeps (drain+snapshot p50 ${drains.sort((a, b) => a - b)[10]} ms, max ${drains[19]} ms), GET p99 ${percentile(report.getMs, 99).toFixed(0)} ms`,
    );
  }, 180_000);

  it("20 sleeps made on the platform behind Traefik's back: no GET fails (307 back once awake), the failed others are counted", async () => {
    const vm = await f.simulator.sim.createVm();
    const route = await addRouteVia(f.stack, vm.id, "external");
    await waitFor(() => f.direct(route.id), "the direct router");
    const load = startLoad(f.traefik.entryPort, "external.hatch.local", { prefix: "ext" });
    for (let i = 0; i < 20; i++) {
      // As above: half the sleeps meet the load on the direct path, half right after the wake.
      if (i % 2 === 0) await waitFor(() => f.direct(route.id), "the direct routers back after the wake");
      await new Promise((r) => setTimeout(r, 150));
      await f.simulator.sim.snapshot(vm.id);
      await waitFor(() => f.simulator.sim.getVm(vm.id)!.state === "running", "a request to wake the VM", 15_000);
    }
    const report = await load.stop();
    const gets = report.failures.filter((f) => f.method === "GET");
    const others = report.failures.filter((f) => f.method !== "GET");
    const posts = [...report.sent.values()].filter((m) => m === "POST").length;
    console.log(
      `[sleep-traefik] ${simNetwork} platform sleeps: ${report.sent.size} requests, ${gets.length} GETs failed, ${others.length} of ${posts} POSTs failed (${((100 * others.length) / posts).toFixed(2)}%), ${report.redirects} GETs sent back with 307, GET p50 ${percentile(report.getMs, 50).toFixed(0)} ms, p99 ${percentile(report.getMs, 99).toFixed(0)} ms, max ${percentile(report.getMs, 100).toFixed(0)} ms`,
    );
    expect(gets).toEqual([]);
    // Traefik's retry covers POSTs whose connection was refused; those lost were cut inside the VM
    // (502) or frozen in it past the suite's response deadline (504).
    expect(others.filter((f) => f.status !== 502 && f.status !== 504)).toEqual([]);
    expect(report.redirects).toBeGreaterThan(0);
  }, 180_000);
});
