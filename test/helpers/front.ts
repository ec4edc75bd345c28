/**
 * `hatch-proxy start` as a child process on free ports, in a directory of its own, for the tests of
 * the public front (Traefik supervised by npm start, shutdown, two instances on one machine).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { freePort } from "./env.ts";
import { seedPglite } from "./pglite-template.ts";
import { waitFor } from "./wait.ts";

export const REPO = fileURLToPath(new URL("../..", import.meta.url));
export const BIN = join(REPO, "bin/hatch-proxy.js");

export interface Product {
  child: ChildProcess;
  /** The directory it runs in (its data directory is `<dir>/data`). */
  dir: string;
  ports: { api: number; proxy: number; wake: number; sim: number };
  apiUrl: string;
  proxyUrl: string;
  /** Everything it wrote, stdout and stderr. */
  output(): string;
  /** Its JSON log lines. */
  logLines(): { level: string; msg: string; [k: string]: unknown }[];
  key(): string;
  /** Traefik's loopback entry point, from the static config it runs on (undefined without Traefik). */
  traefikApi(): string | undefined;
  /** Resolves with the exit code (null for a signal) once it has exited. */
  exited: Promise<number | null>;
}

export interface ProductOptions {
  dir?: string;
  env?: Record<string, string>;
  /**
   * Reuse these ports (a restart in the same directory); `"defaults"` sets no address at all, so the
   * product listens where a newcomer's `npm start` does (:8080, :9090, :9091, the simulator on :8090).
   */
  ports?: Product["ports"] | "defaults";
  /** HATCH_SIM_IP_PREFIX, distinct per test file (simulated VMs listen on <prefix>.N:8080); with default ports, the default prefix. */
  ipPrefix?: string;
  /** Resolve once the output holds this (default: the banner's "Try it:", i.e. fully started). */
  until?: string;
  /**
   * Let the product create its embedded database itself, as on a fresh clone. By default a new
   * directory gets a migrated copy of the test run's PGlite template (the same files, 3 s sooner).
   */
  freshDatabase?: boolean;
}

/** Where `hatch-proxy start` listens when no address is set (config.ts's defaults). */
const DEFAULT_PORTS: Product["ports"] = { api: 8080, proxy: 9090, wake: 9091, sim: 8090 };

export async function freePorts(): Promise<Product["ports"]> {
  return { api: await freePort(), proxy: await freePort(), wake: await freePort(), sim: await freePort() };
}

/**
 * Products still running when the test process exits (a failed hook, a worker torn down): killed
 * with their Traefiks, which by design outlive a hatch-proxy that dies.
 */
const running = new Set<ChildProcess>();
const dirs = new Set<string>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
  for (const dir of dirs) killTraefiks(dir);
});

/** Starts `hatch-proxy start` and waits for its banner (60 s at most). */
export async function startProduct(opts: ProductOptions): Promise<Product> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "hatch-front-"));
  if (!opts.dir && !opts.freshDatabase) seedPglite(join(dir, "data", "pglite"));
  const defaults = opts.ports === "defaults";
  const ports = opts.ports === "defaults" ? DEFAULT_PORTS : (opts.ports ?? (await freePorts()));
  if (!defaults && !opts.ipPrefix) throw new Error("startProduct: give an ipPrefix of the test file's own");
  const addresses = defaults
    ? {}
    : {
        HATCH_HTTP_ADDR: `127.0.0.1:${ports.api}`,
        HATCH_PROXY_ADDR: `127.0.0.1:${ports.proxy}`,
        HATCH_WAKE_ADDR: `127.0.0.1:${ports.wake}`,
        HATCH_SIM_ADDR: `127.0.0.1:${ports.sim}`,
        HATCH_SIM_IP_PREFIX: opts.ipPrefix,
      };
  let out = "";
  const child = spawn(process.execPath, [BIN, "start"], {
    cwd: dir,
    env: { ...process.env, ...addresses, HATCH_SIM_RESTORE_MS: "300", HATCH_LOG_LEVEL: "info", ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout!.on("data", (c) => (out += c));
  child.stderr!.on("data", (c) => (out += c));
  running.add(child);
  dirs.add(dir);
  const exited = new Promise<number | null>((r) =>
    child.once("exit", (code) => {
      running.delete(child);
      r(code);
    }),
  );
  const deadline = Date.now() + 60_000;
  while (!out.includes(opts.until ?? "Try it:")) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`hatch-proxy start did not come up:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    dir,
    ports,
    apiUrl: `http://127.0.0.1:${ports.api}`,
    proxyUrl: `http://127.0.0.1:${ports.proxy}`,
    output: () => out,
    logLines: () =>
      out.split("\n").flatMap((l) => {
        if (!l.startsWith("{")) return [];
        try {
          return [JSON.parse(l)];
        } catch {
          return [];
        }
      }),
    key: () => readFileSync(join(dir, "data/api-key"), "utf8").trim(),
    traefikApi: () => {
      if (!out.includes("via Traefik")) return undefined;
      const address = (parse(readFileSync(join(dir, "data/traefik.yml"), "utf8")) as { entryPoints: { traefik: { address: string } } }).entryPoints.traefik.address;
      return `http://${address}`;
    },
    exited,
  };
}

/** A standalone simulator (`hatch-proxy sim`): its VMs outlive the product under test. `env` adds settings (HATCH_SIM_USERS…). */
export async function startSimulator(
  ipPrefix: string,
  dir: string,
  dataDir = join(dir, "sim-data"),
  env: Record<string, string> = {},
): Promise<{ url: string; child: ChildProcess; output(): string; stop(): Promise<void> }> {
  const port = await freePort();
  let out = "";
  const child = spawn(process.execPath, [BIN, "sim"], {
    cwd: dir,
    env: { ...process.env, HATCH_SIM_ADDR: `127.0.0.1:${port}`, HATCH_SIM_IP_PREFIX: ipPrefix, HATCH_SIM_RESTORE_MS: "300", HATCH_DATA_DIR: dataDir, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout!.on("data", (c) => (out += c));
  child.stderr!.on("data", (c) => (out += c));
  const deadline = Date.now() + 30_000;
  while (!out.includes("VM simulator listening")) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`hatch-proxy sim did not come up:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    child,
    output: () => out,
    stop: () => stopProcess(child),
  };
}

/** Sends `signal` (SIGINT), then SIGKILL after `ms`; resolves once the process has exited. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals = "SIGINT", ms = 20_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), ms);
  await exited;
  clearTimeout(timer);
}

/** Pids of the Traefik processes running on `<dir>/data/traefik.yml` (found in /proc, whoever started them). */
export function traefikPids(dir: string): number[] {
  const wanted = `--configFile=${join(dir, "data/traefik.yml")}`;
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").includes(wanted)) pids.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

/** Ends stray Traefiks of a test directory, by pid (after a test that killed their parent). */
export function killTraefiks(dir: string): void {
  for (const pid of traefikPids(dir)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
}

/** Creates a VM on a simulator API and a route to its port 8080. */
export async function vmWithRoute(simUrl: string, product: Product, subdomain: string): Promise<{ vmId: string; routeId: string }> {
  const vm = (await (await fetch(`${simUrl}/vms`, { method: "POST" })).json()) as { id: string };
  const res = await fetch(`${product.apiUrl}/vms/${vm.id}/routes`, {
    method: "POST",
    headers: { authorization: `Bearer ${product.key()}`, "content-type": "application/json" },
    body: JSON.stringify({ subdomain, target_port: 8080 }),
  });
  if (res.status !== 201) throw new Error(`route not created: ${res.status} ${await res.text()}`);
  return { vmId: vm.id, routeId: ((await res.json()) as { id: string }).id };
}

/** Waits until the product's Traefik has the route's direct router (requests then bypass the sidecar). */
export async function waitForDirectRouter(product: Product, routeId: string): Promise<void> {
  const api = product.traefikApi();
  if (!api) throw new Error(`no Traefik in front:\n${product.output()}`);
  await waitFor(async () => (await fetch(`${api}/api/http/routers/${routeId}@http`).then((r) => r.status, () => 0)) === 200, `router ${routeId} in Traefik`);
}

/** GET through the public proxy with a Host header; status and body (0 when nothing answered). */
export async function viaProxy(product: Product | string, subdomain: string, path = "/", timeoutMs = 3000): Promise<{ status: number; body: string }> {
  const { request } = await import("node:http");
  const base = new URL(typeof product === "string" ? product : product.proxyUrl);
  return new Promise((resolve) => {
    const req = request(
      { host: base.hostname, port: base.port, path, headers: { host: `${subdomain}.hatch.local` }, timeout: timeoutMs, agent: false },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
        res.on("error", () => resolve({ status: 0, body }));
      },
    );
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve({ status: 0, body: "" }));
    req.end();
  });
}

export { waitFor };
