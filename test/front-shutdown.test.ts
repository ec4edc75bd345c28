/**
 * Ctrl-C while a WebSocket is open: the tunnel is closed, the process exits within 5 s, and /readyz
 * fails from the moment the signal arrives (it used to wait as long as the tunnel stayed open,
 * answering `ready` meanwhile). With the embedded proxy, and with Traefik in front when there is one.
 */
import { rmSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { traefikBinary } from "./helpers/env.ts";
import { killTraefiks, startProduct, traefikPids, waitFor, type Product } from "./helpers/front.ts";

const BUDGET_MS = 5000;

const modes: [string, Record<string, string>, string][] = [["the embedded proxy", { HATCH_PROXY_FRONT: "embedded" }, "127.0.145"]];
const bin = traefikBinary();
if (bin) modes.push(["Traefik in front", { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: bin }, "127.0.146"]);
else console.warn("[front-shutdown] no Traefik binary: Ctrl-C with Traefik in front is SKIPPED");

describe.each(modes)("Ctrl-C with %s", (_name, env, ipPrefix) => {
  let product: Product | undefined;
  afterAll(() => {
    if (!product) return;
    product.child.kill("SIGKILL");
    killTraefiks(product.dir);
    rmSync(product.dir, { recursive: true, force: true });
  });

  it("closes an open WebSocket, fails /readyz at once and exits within 5 s", async () => {
    const p = (product = await startProduct({ ipPrefix, env }));
    const sim = `http://127.0.0.1:${p.ports.sim}`;
    const vm = (await (await fetch(`${sim}/vms`, { method: "POST" })).json()) as { id: string };
    const created = await fetch(`${p.apiUrl}/vms/${vm.id}/routes`, {
      method: "POST",
      headers: { authorization: `Bearer ${p.key()}`, "content-type": "application/json" },
      body: JSON.stringify({ subdomain: "live", target_port: 8080 }),
    });
    expect(created.status).toBe(201);
    const ws = new WebSocket(`ws://127.0.0.1:${p.ports.proxy}/ws`, { headers: { host: "live.hatch.local" } });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    // Cut by the shutdown: a reset may come as an error event before the close.
    ws.on("error", () => {});
    const closed = new Promise<number>((r) => ws.once("close", () => r(performance.now())));
    expect((await fetch(`${p.apiUrl}/readyz`)).status).toBe(200);

    const signalled = performance.now();
    p.child.kill("SIGINT");
    const exited = p.exited.then((code) => ({ code, ms: performance.now() - signalled }));
    let done = false;
    void exited.then(() => (done = true));
    // Once the shutdown has begun (its first log line; a request already on its way may still be
    // answered before the signal is handled), every answer is a 503, or none once the API is gone.
    await waitFor(() => done || p.output().includes('"msg":"stopping'), "the shutdown to begin", BUDGET_MS, 2);
    const answers: number[] = [];
    do {
      answers.push(await fetch(`${p.apiUrl}/readyz`, { signal: AbortSignal.timeout(500) }).then((r) => r.status, () => 0));
      await new Promise((r) => setTimeout(r, 25));
    } while (!done && performance.now() - signalled < BUDGET_MS + 3000);
    await waitFor(() => done, "the process to exit", 5000);
    const { code, ms } = await exited;
    console.info(`[front-shutdown] ${_name}: exited ${Math.round(ms)} ms after SIGINT, WebSocket open; /readyz answers meanwhile: ${answers.join(" ")}`);
    expect(answers.filter((s) => s !== 503 && s !== 0), `answers after the signal: ${answers.join(" ")}`).toEqual([]);
    expect(ms, `exit after ${Math.round(ms)} ms`).toBeLessThan(BUDGET_MS);
    expect(code).toBe(0);
    expect((await closed) - signalled).toBeLessThan(BUDGET_MS);
    const lines = p.logLines();
    expect(lines.find((l) => l.msg === "stopped")).toBeDefined();
    killTraefiks(p.dir);
  }, 60_000);
});

describe.skipIf(!bin)("Ctrl-C during the start", () => {
  it("is not lost: what was started is stopped once the start is done, Traefik included, exit 0", async () => {
    // The route API is up, Traefik not yet: the signal comes in the middle of the start.
    const p = await startProduct({ ipPrefix: "127.0.151", env: { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: bin! }, until: '"msg":"traefik config endpoint' });
    try {
      p.child.kill("SIGINT");
      expect(await p.exited).toBe(0);
      const lines = p.logLines();
      expect(lines.find((l) => l.msg.startsWith("stopping"))).toMatchObject({ signal: "SIGINT", after_start: true });
      expect(lines.find((l) => l.msg === "stopped")).toBeDefined();
      expect(traefikPids(p.dir)).toEqual([]);
    } finally {
      p.child.kill("SIGKILL");
      killTraefiks(p.dir);
      rmSync(p.dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe.skipIf(!bin)("a second Ctrl-C", () => {
  /** Starts the product (up to `until`), sends Ctrl-C twice, expects exit 130 with no Traefik left; returns the log. */
  async function ctrlCTwice(ipPrefix: string, until?: string) {
    const p = await startProduct({ ipPrefix, env: { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: bin! }, ...(until && { until }) });
    try {
      expect(traefikPids(p.dir)).toHaveLength(1);
      p.child.kill("SIGINT");
      // Two signals sent back to back reach the handler as one: the second follows the first's line.
      await waitFor(() => p.output().includes('"msg":"stopping'), "the shutdown to begin", BUDGET_MS, 2);
      p.child.kill("SIGINT");
      expect(await p.exited).toBe(130);
      await waitFor(() => traefikPids(p.dir).length === 0, "its Traefik to be gone", 2000);
      return p.logLines();
    } finally {
      p.child.kill("SIGKILL");
      killTraefiks(p.dir);
      rmSync(p.dir, { recursive: true, force: true });
    }
  }

  it("exits at once and takes the Traefik along (a forced exit leaves nothing behind)", async () => {
    const lines = await ctrlCTwice("127.0.146");
    expect(lines.map((l) => l.msg)).toContain("second signal: exiting now");
  }, 60_000);

  it("during the start exits at once and takes the Traefik being started along", async () => {
    // Traefik is spawned, not yet routing with our config: the start is still under way.
    const lines = await ctrlCTwice("127.0.152", '"msg":"traefik launched');
    expect(lines.find((l) => l.msg.startsWith("stopping"))).toMatchObject({ after_start: true });
    expect(lines.map((l) => l.msg)).toContain("second signal: exiting now");
    expect(lines.map((l) => l.msg)).not.toContain("traefik started");
  }, 60_000);
});
