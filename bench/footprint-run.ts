/**
 * One `hatch-proxy start` for the footprint benchmark: spawned on free ports in a directory of its
 * own, its process tree's RSS sampled from the spawn on, and the calls the benchmark makes on it.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "../test/helpers/env.ts";
import { viaProxy } from "../test/helpers/front.ts";
import { RssSampler } from "../test/helpers/process-tree.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

export interface Launched {
  dir: string;
  apiUrl: string;
  readyMs: number;
  sampler: RssSampler;
  /** nodejs_heap_size_used_bytes from its /metrics. */
  heapUsed(): Promise<number>;
  createVm(): Promise<string>;
  addRoute(vm: string, subdomain: string): Promise<void>;
  viaProxy(subdomain: string): Promise<void>;
  vmWithRoute(subdomain: string): Promise<string>;
  /** POST /vms/{id}/sleep, then a request through the proxy that wakes it. */
  sleepAndWake(vm: string, subdomain: string): Promise<void>;
  stop(): Promise<void>;
}

async function ok(res: Response | Promise<Response>, what: string): Promise<any> {
  const r = await res;
  if (!r.ok) throw new Error(`${what}: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

/** Spawns `node <args>` in `dir` (a new one by default) and waits for /readyz 200. */
export async function launch(args: readonly string[], env: Record<string, string>, dir = mkdtempSync(join(tmpdir(), "hatch-footprint-"))): Promise<Launched> {
  const [api, proxy, sim] = [await freePort(), await freePort(), await freePort()];
  const began = performance.now();
  const child = spawn(process.execPath, [...args], {
    cwd: ROOT,
    env: {
      ...process.env,
      HATCH_PROXY_FRONT: "embedded",
      HATCH_DATA_DIR: join(dir, "data"),
      HATCH_HTTP_ADDR: `127.0.0.1:${api}`,
      HATCH_PROXY_ADDR: `127.0.0.1:${proxy}`,
      HATCH_SIM_ADDR: `127.0.0.1:${sim}`,
      HATCH_SIM_IP_PREFIX: "127.0.93",
      HATCH_SIM_RESTORE_MS: "100",
      HATCH_LOG_LEVEL: "warn",
      ...env,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr!.on("data", (c) => (err += c));
  const exited = new Promise((r) => child.once("exit", r));
  const sampler = new RssSampler(child.pid!);
  const apiUrl = `http://127.0.0.1:${api}`;
  const simUrl = `http://127.0.0.1:${sim}`;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`hatch-proxy exited (${child.exitCode}):\n${err}`);
    const status = await fetch(`${apiUrl}/readyz`).then((r) => r.status, () => 0);
    if (status === 200) break;
    if (performance.now() - began > 120_000) throw new Error(`not ready after 2 minutes:\n${err}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const readyMs = Math.round(performance.now() - began);
  const key = readFileSync(join(dir, "data", "api-key"), "utf8").trim();
  const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" };
  const self: Launched = {
    dir,
    apiUrl,
    readyMs,
    sampler,
    async heapUsed() {
      const text = await (await fetch(`${apiUrl}/metrics`)).text();
      return Number(/^nodejs_heap_size_used_bytes (\d+)/m.exec(text)?.[1] ?? NaN);
    },
    async createVm() {
      return ((await ok(fetch(`${simUrl}/vms`, { method: "POST" }), "create a VM")) as { id: string }).id;
    },
    async addRoute(vm, subdomain) {
      await ok(fetch(`${apiUrl}/vms/${vm}/routes`, { method: "POST", headers, body: JSON.stringify({ subdomain, target_port: 8080 }) }), "create a route");
    },
    async viaProxy(subdomain) {
      const r = await viaProxy(`http://127.0.0.1:${proxy}`, subdomain, "/", 30_000);
      if (r.status !== 200) throw new Error(`${subdomain} through the proxy: ${r.status} ${r.body}`);
    },
    async vmWithRoute(subdomain) {
      const vm = await self.createVm();
      await self.addRoute(vm, subdomain);
      await self.viaProxy(subdomain);
      return vm;
    },
    async sleepAndWake(vm, subdomain) {
      await ok(fetch(`${apiUrl}/vms/${vm}/sleep`, { method: "POST", headers, body: "{}" }), "sleep");
      await self.viaProxy(subdomain);
    },
    async stop() {
      sampler.stop();
      child.kill("SIGTERM");
      await exited;
    },
  };
  return self;
}

/** Median start times of CLI calls that exit at once, against `node -e 0`. */
export function cliStartTimes(runs = 11): { runs: number; baselineMs: number; commands: Record<string, number> } {
  const median = (argv: string[]) => {
    const times: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      const r = spawnSync(process.execPath, argv, { cwd: ROOT, stdio: "ignore" });
      if (r.status !== 0) throw new Error(`node ${argv.join(" ")} exited ${r.status}`);
      times.push(performance.now() - t);
    }
    return times.sort((a, b) => a - b)[Math.floor(runs / 2)]!;
  };
  return {
    runs,
    baselineMs: median(["-e", "0"]),
    commands: {
      "node dist/main.js help": median(["dist/main.js", "help"]),
      "node dist/main.js routes list --help": median(["dist/main.js", "routes", "list", "--help"]),
      "node bin/hatch-proxy.js help (the build)": median(["bin/hatch-proxy.js", "help"]),
      "node --import tsx src/main.ts help": median(["--import", "tsx", "src/main.ts", "help"]),
    },
  };
}
