/**
 * The Traefik `npm start` runs in front is supervised: killed or hung, it is restarted (and /readyz
 * is red in between); and it outlives a crash of hatch-proxy, routing running VMs from its last config,
 * and the next start adopts it (no gap) or, when its static config changed, replaces it. VMs live in a separate simulator process, as real VMs would.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { traefikBinary } from "./helpers/env.ts";
import { freePorts, killTraefiks, startProduct, startSimulator, stopProcess, traefikPids, viaProxy, vmWithRoute, waitFor, waitForDirectRouter, type Product } from "./helpers/front.ts";

const bin = traefikBinary();
if (!bin) console.warn("[front-supervise] no Traefik binary: the supervised-Traefik tests are SKIPPED");

describe.skipIf(!bin)("npm start supervises its Traefik", () => {
  let dir: string;
  let sim: Awaited<ReturnType<typeof startSimulator>>;
  let product: Product | undefined;
  let vmId: string;
  // A short hang timeout: the hung-Traefik test waits for it.
  const env = () => ({ HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: bin!, HATCH_API_URL: sim.url, HATCH_TRAEFIK_HANG_TIMEOUT: "3s" });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "hatch-front-supervise-"));
    sim = await startSimulator("127.0.141", dir);
    product = await startProduct({ dir, ipPrefix: "127.0.141", env: env() });
    const route = await vmWithRoute(sim.url, product, "svapp");
    vmId = route.vmId;
    // Routed directly, not through the sidecar (which dies with hatch-proxy).
    await waitForDirectRouter(product, route.routeId);
    expect((await viaProxy(product, "svapp", "/hello")).status).toBe(200);
  }, 90_000);

  afterAll(async () => {
    if (product) await stopProcess(product.child);
    killTraefiks(dir);
    await sim?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** kill -9 of hatch-proxy: its Traefik (the orphan) is left running. */
  async function crash(): Promise<{ p: Product; orphan: number | undefined }> {
    const p = product!;
    const [orphan] = traefikPids(dir);
    p.child.kill("SIGKILL");
    await p.exited;
    product = undefined;
    return { p, orphan };
  }

  it("keeps routing running VMs after hatch-proxy is killed, and the next start adopts that Traefik without a gap", async () => {
    const { p, orphan } = await crash();
    // Traefik writes a log line every failed poll and an access-log line per request: with pipes to
    // a dead parent the first write killed it (SIGPIPE). Requests every 100 ms from the crash until
    // the next start routes: every one answered by the VM, through the restart too.
    const failures: string[] = [];
    let sent = 0;
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        const r = await viaProxy(p, "svapp", `/across-${sent}`).catch((e: Error) => ({ status: 0, body: e.message }));
        if (r.status !== 200 || JSON.parse(r.body).vm_id !== vmId) failures.push(`${sent}: ${r.status} ${r.body.slice(0, 80)}`);
        sent += 1;
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 2000));
      expect(traefikPids(dir)).toEqual([orphan]);
      product = await startProduct({ dir, ports: p.ports, ipPrefix: "127.0.141", env: env() });
      expect(product.output()).toContain("via Traefik");
      expect(product.logLines().find((l) => l.msg === "adopting the Traefik an earlier hatch-proxy left running")).toMatchObject({ pid: orphan });
      expect(traefikPids(dir)).toEqual([orphan]);
      // It polls the new process: a route created now goes live on it.
      const fresh = await fetch(`${product.apiUrl}/vms/${vmId}/routes`, {
        method: "POST",
        headers: { authorization: `Bearer ${product.key()}`, "content-type": "application/json" },
        body: JSON.stringify({ subdomain: "svnew", target_port: 8080 }),
      });
      expect(fresh.status).toBe(201);
      await waitForDirectRouter(product, ((await fresh.json()) as { id: string }).id);
      expect((await viaProxy(product, "svnew", "/new")).status).toBe(200);
      expect((await fetch(`${product.apiUrl}/readyz`)).status).toBe(200);
    } finally {
      stop = true;
      await traffic;
    }
    console.info(`[front-supervise] hatch-proxy killed and started again: ${sent} requests through the adopted Traefik, ${failures.length} failed`);
    expect(failures).toEqual([]);
    expect(sent).toBeGreaterThan(20);

    // Not our child, still supervised: its death is seen and a Traefik of our own takes over.
    process.kill(orphan!, "SIGKILL");
    await waitFor(() => product!.logLines().some((l) => l.msg === "traefik exited; restarting"), "the adopted Traefik's death to be seen", 5000);
    await waitFor(async () => (await fetch(`${product!.apiUrl}/readyz`)).status === 200, "/readyz to recover", 15_000);
    expect(traefikPids(dir)).toHaveLength(1);
    expect(traefikPids(dir)[0]).not.toBe(orphan);
    expect((await viaProxy(product!, "svapp", "/after-adopted")).status).toBe(200);
  }, 60_000);

  it("replaces a leftover Traefik whose static config this start would not write (the public port moved)", async () => {
    const { p, orphan } = await crash();
    const ports = { ...p.ports, proxy: (await freePorts()).proxy };
    product = await startProduct({ dir, ports, ipPrefix: "127.0.141", env: env() });
    expect(product.logLines().find((l) => l.msg?.startsWith("replacing the Traefik an earlier hatch-proxy left running"))).toMatchObject({ pid: orphan });
    const now = traefikPids(dir);
    expect(now).toHaveLength(1);
    expect(now[0]).not.toBe(orphan);
    await waitFor(async () => (await viaProxy(product!, "svapp", "/moved")).status === 200, "the route on the new public port");
  }, 60_000);

  it("restarts a killed Traefik and says so in /readyz meanwhile", async () => {
    const p = product!;
    const [pid] = traefikPids(dir);
    expect(pid).toBeDefined();
    const readyz = async () => {
      const res = await fetch(`${p.apiUrl}/readyz`, { signal: AbortSignal.timeout(3000) });
      return { status: res.status, body: (await res.json()) as { checks: Record<string, string> } };
    };
    expect((await readyz()).status).toBe(200);
    const killed = performance.now();
    process.kill(pid!, "SIGKILL");
    // Red at once (its ping fails before the exit is seen), then saying what happened.
    const down: string[] = [];
    await waitFor(async () => {
      const r = await readyz();
      if (r.status === 200) down.push("ready");
      else down.push(r.body.checks.front!);
      return /^traefik exited \(SIGKILL\); restart/.test(down.at(-1)!);
    }, "/readyz to name the exit", 3000, 20);
    expect(down.filter((d) => d === "ready")).toEqual([]);
    await waitFor(async () => (await readyz()).status === 200, "/readyz to recover", 15_000);
    console.info(`[front-supervise] Traefik killed: /readyz ready again after ${Math.round(performance.now() - killed)} ms (${down.length} red answers on the way)`);
    expect(traefikPids(dir)).toHaveLength(1);
    expect(traefikPids(dir)[0]).not.toBe(pid);
    expect((await viaProxy(p, "svapp", "/hello")).status).toBe(200);
    const lines = p.logLines();
    expect(lines.find((l) => l.msg === "traefik exited; restarting")).toMatchObject({ level: "error", signal: "SIGKILL", restart: 1 });
    expect(lines.find((l) => l.msg === "traefik restarted")).toMatchObject({ level: "info", restart: 1 });
  }, 30_000);

  it("a second npm start on the directory in use stops before it touches the running one's Traefik", async () => {
    const p = product!;
    const [pid] = traefikPids(dir);
    const files = ["data/traefik.yml", "data/traefik-secrets.json", "data/traefik.pid", "data/api-key"].map((f) => [f, readFileSync(join(dir, f), "utf8")]);
    // Other ports: its static config differs, so it would have replaced (killed) that Traefik.
    const second = await startProduct({ dir, ipPrefix: "127.0.141", env: env() }).then(
      async (q) => {
        await stopProcess(q.child);
        return "started";
      },
      (e: Error) => e.message,
    );
    expect(second).toMatch(new RegExp(`the data directory .* is in use by process ${p.child.pid}`));
    expect(traefikPids(dir)).toEqual([pid]);
    expect(files.map(([f]) => [f, readFileSync(join(dir, f!), "utf8")])).toEqual(files);
    expect((await viaProxy(p, "svapp", "/still-mine")).status).toBe(200);
  }, 60_000);

  it("kills and restarts a Traefik that is alive but answers nothing (hung)", async () => {
    const p = product!;
    const [pid] = traefikPids(dir);
    // SIGSTOP: the process lives and holds its ports, but routes nothing and never exits by itself.
    process.kill(pid!, "SIGSTOP");
    const stopped = performance.now();
    try {
      const r = await fetch(`${p.apiUrl}/readyz`, { signal: AbortSignal.timeout(5000) });
      expect(r.status).toBe(503);
      expect(((await r.json()) as { checks: Record<string, string> }).checks.front).toMatch(/does not answer its ping/);
      await waitFor(() => p.logLines().some((l) => l.msg === "traefik hung; killed it and restarting"), "the hang to be seen", 20_000, 100);
      await waitFor(async () => (await fetch(`${p.apiUrl}/readyz`)).status === 200, "/readyz to recover", 15_000);
    } finally {
      try {
        process.kill(pid!, "SIGCONT");
      } catch {
        // killed, as expected
      }
    }
    console.info(`[front-supervise] Traefik stopped (SIGSTOP): routing again after ${Math.round(performance.now() - stopped)} ms`);
    expect(traefikPids(dir)).toHaveLength(1);
    expect(traefikPids(dir)[0]).not.toBe(pid);
    expect(p.logLines().find((l) => l.msg === "traefik hung; killed it and restarting")).toMatchObject({ level: "error", pid });
    expect((await viaProxy(p, "svapp", "/after-hang")).status).toBe(200);
  }, 45_000);

  it("moves Traefik to a free port when its own was taken while it was down, and the sleeper follows", async () => {
    const p = product!;
    const before = p.traefikApi()!;
    const [pid] = traefikPids(dir);
    // Something else listens on the port the moment Traefik is gone (and never answers).
    const squatter = createServer(() => {});
    process.kill(pid!, "SIGKILL");
    await waitFor(
      () =>
        new Promise<boolean>((resolve) => {
          squatter.once("error", () => resolve(false));
          squatter.listen(Number(new URL(before).port), "127.0.0.1", () => resolve(true));
        }),
      "the old port to be free",
      3000,
      5,
    );
    try {
      await waitFor(async () => (await fetch(`${p.apiUrl}/readyz`)).status === 200, "/readyz to recover", 15_000);
      const after = p.traefikApi()!;
      expect(after).not.toBe(before);
      expect(p.logLines().find((l) => l.msg === "traefik's loopback port is taken by another process; moved")).toMatchObject({ from: before, to: after });
      // A sleep is confirmed through Traefik's API: it must ask the Traefik at the new port.
      const sleep = await fetch(`${p.apiUrl}/vms/${vmId}/sleep`, { method: "POST", headers: { authorization: `Bearer ${p.key()}` } });
      expect(sleep.status, await sleep.clone().text()).toBe(200);
      expect(await viaProxy(p, "svapp", "/woken")).toMatchObject({ status: 200 });
    } finally {
      squatter.close();
    }

    // A normal stop takes its Traefik along.
    await stopProcess(p.child);
    expect(await p.exited).toBe(0);
    product = undefined;
    expect(traefikPids(dir)).toEqual([]);
    // Nothing left to adopt, and no secret of a Traefik that is gone.
    expect(existsSync(join(dir, "data/traefik-secrets.json"))).toBe(false);
  }, 45_000);
});
