/**
 * Sleep benchmark: `npm run bench -- sleep` (or `npx tsx bench/sleep.ts`). Needs a Traefik binary
 * (TRAEFIK_BIN, PATH, or the cache of scripts/traefik.sh).
 *
 * Processes (so no part shares an event loop with what it measures): this one drives the load and
 * measures; the simulator (Hatch's API and the VMs' guest servers) runs in its own process; the
 * stack (route API + wake sidecar on PGlite, as `npm start` runs them, reaching the simulator over
 * HTTP with the default 5 s VM sync) in another; Traefik with the production static config (HTTP
 * provider on the stack, poll 1 s, metrics, access log) in a third. A second Traefik with the same
 * static config and a one-router file config ("plain") is the baseline of parts 3 and 4. CPU time
 * and RSS of each process are read from /proc.
 *
 * 1. `api`: BENCH_SLEEPS sleeps through POST /vms/{id}/sleep under continuous GETs and POSTs
 *    (1–64 KiB bodies, a unique rid each) from BENCH_CLIENTS clients through Traefik. Every rid must
 *    run exactly once at the guest, every answer be a 200 with the right body hash.
 * 2. `external`: as many sleeps made on the platform behind hatch-proxy's back (the simulator's
 *    POST /vms/{id}/snapshot), clients following 307s: failed GETs (goal 0), failed POSTs, and how
 *    long after each snapshot requests kept failing.
 * 3. `streams`: WebSocket echo round trips and SSE events per second, direct to the guest, through
 *    the plain Traefik, and the production path (Traefik's `hatch-streams` router → sidecar →
 *    guest), with each process's CPU per message; the sidecar's memory per idle WebSocket (probed
 *    right after setup, on a fresh sidecar).
 * 4. `routing`: GET and POST req/s through the production Traefik config (GET/HEAD router with the
 *    errors middleware, any-method router with retry, streams router) vs the plain one (autocannon
 *    in its own process); while the VMs' serversTransport keeps fewer than 200 idle connections, a
 *    third Traefik serves the production config with 200, to show what that limit costs.
 *
 * The stack runs with HATCH_VM_RESPONSE_TIMEOUT = BENCH_VM_RESPONSE_TIMEOUT_MS (5000; see part 2).
 * BENCH_PARTS=api,external,streams,routing picks parts. Sizes: BENCH_SLEEPS (20), BENCH_CLIENTS (16),
 * BENCH_THINK_MS (10), BENCH_RESTORE_MS (300), BENCH_WS_CONNECTIONS (64), BENCH_STREAM_SECONDS (3),
 * BENCH_SSE_STREAMS (200), BENCH_SSE_MS (10), BENCH_IDLE_WS (1000), BENCH_SECONDS (3 per autocannon
 * run), BENCH_CONNECTIONS (32). BENCH_SIM_NETWORK=loopback (default: VMs on 127.66.1.N) or bridge
 * (bench/network.ts: VMs on the simulator's bridge network, 10.66.1.0/24, each in a network namespace
 * of its own, as on Hatch: a snapshot keeps the VM `running` but paused, a black hole, for
 * BENCH_SNAPSHOT_MS (the simulator's 1500 by default), then removes its link; needs a network
 * namespace of its own: `npm run bench -- sleep --network=bridge` or `--network=both`). Every part
 * runs on either network; parts 1 and 2 are where the bridge changes what a sleep does, parts 3 and
 * 4 measure a running VM (on the bridge, through a veth pair and the bridge). The simulator's limit of
 * 10 snapshots per VM is lifted. Children and temp dirs go on any exit (Ctrl-C included);
 * BENCH_TIMEOUT_S (600) stops a run that hangs.
 * Internal modes: `--sim` (the simulator), `--stack <json>` (the stack).
 */
import { autocannon, type Cannon } from "./autocannon.ts";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes, randomFillSync } from "node:crypto";
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { Agent, createServer, request, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import v8 from "node:v8";
import { runInNewContext } from "node:vm";
import WebSocket from "ws";
import { stringify as toYaml } from "yaml";
import { testConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { findTraefikBinary } from "../src/traefik/binary.ts";
import { startStack } from "../src/stack.ts";
import { VM_TRANSPORT } from "../src/traefik/config-builder.ts";
import { buildStaticConfig, internalApiRoutes } from "../src/traefik/static-config.ts";
import { createSimulator } from "../src/vms/simulator/index.ts";
import { assertBenchNetwork, benchNetwork, benchSimOptions, writeSummary } from "./network.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const num = (name: string, dflt: number) => {
  const v = Number(process.env[name] ?? dflt);
  return Number.isFinite(v) && v >= 0 ? v : dflt;
};
const SLEEPS = num("BENCH_SLEEPS", 20);
const CLIENTS = Math.max(1, num("BENCH_CLIENTS", 16));
const THINK_MS = num("BENCH_THINK_MS", 10);
const RESTORE_MS = num("BENCH_RESTORE_MS", 300);
/** Bridge only: how long a snapshot keeps the VM paused (a black hole) and still `running`; unset = the simulator's default (1500 ms). */
const SNAPSHOT_MS = process.env.BENCH_SNAPSHOT_MS ? num("BENCH_SNAPSHOT_MS", 1500) : undefined;
/**
 * The stack's HATCH_VM_RESPONSE_TIMEOUT. The product's default (60 s) is longer than the clients'
 * REQUEST_TIMEOUT_MS: a request frozen in a VM paused behind hatch-proxy's back would be answered
 * after 60 s but counted lost by a client that gave up at 30 s, and every client stuck so leaves no
 * request to wake the VM. Part 2 measures that deployment (Hatch's own idle monitor on), for which
 * the README says to lower it.
 */
const VM_RESPONSE_TIMEOUT_MS = num("BENCH_VM_RESPONSE_TIMEOUT_MS", 5000);
const WS_CONNECTIONS = Math.max(1, num("BENCH_WS_CONNECTIONS", 64));
const STREAM_SECONDS = Math.max(1, num("BENCH_STREAM_SECONDS", 3));
const SSE_STREAMS = Math.max(1, num("BENCH_SSE_STREAMS", 200));
const SSE_MS = Math.max(1, num("BENCH_SSE_MS", 10));
const IDLE_WS = num("BENCH_IDLE_WS", 1000);
const SECONDS = Math.max(1, num("BENCH_SECONDS", 3));
const CONNECTIONS = Math.max(1, num("BENCH_CONNECTIONS", 32));
const PARTS = (process.env.BENCH_PARTS ?? "api,external,streams,routing").split(",").map((s) => s.trim());
const IP_PREFIX = "127.66.1";
const BASE = "hatch.local";
const KEY = "bench-sleep-key";
/** Running traffic before the first sleep and between sleeps: the baseline's samples. */
const PRE_MS = 1000;
const GAP_MS = 400;
/** After an external sleep, the VM must stay on its direct router this long before the next one (one config poll and more). */
const EXT_GAP_MS = 1000;
const REQUEST_TIMEOUT_MS = 30_000;
/** The whole run, whatever happens. */
const WATCHDOG_MS = num("BENCH_TIMEOUT_S", 600) * 1000;
const GUEST_PORT = 8080;

// ---- child modes ------------------------------------------------------------------------------

function exitWhenStdinCloses(close: () => Promise<void>) {
  process.stdin.resume();
  process.stdin.on("end", () => {
    const hard = setTimeout(() => process.exit(0), 10_000);
    hard.unref();
    void close().finally(() => process.exit(0));
  });
}

/**
 * The simulator and its REST API; prints where it listens and its pid. Hatch's limit of 10
 * snapshots per VM is lifted: each part sleeps one VM BENCH_SLEEPS times (20 by default).
 */
async function simMode() {
  const sim = await createSimulator({ ...benchSimOptions(IP_PREFIX), restoreMs: RESTORE_MS, snapshotLimit: 0, snapshotMs: SNAPSHOT_MS });
  const api = await sim.listen({ host: "127.0.0.1", port: 0 });
  process.stdout.write(JSON.stringify({ url: api.url, pid: process.pid }) + "\n");
  exitWhenStdinCloses(() => sim.close());
}

interface StackArgs {
  apiPort: number;
  wakePort: number;
  simUrl: string;
  traefikApiUrl: string;
  dataDir: string;
  wakeSecret: string;
}

/** Route API + wake sidecar; prints their URLs; answers `mem` on stdin with its memory after a full GC. */
async function stackMode(args: StackArgs) {
  const logFile = createWriteStream(join(args.dataDir, "stack.log"));
  const log = createLogger("warn", { service: "bench-stack" }, (l) => void logFile.write(l + "\n"));
  const config = testConfig({
    httpAddr: { host: "127.0.0.1", port: args.apiPort },
    wakeAddr: { host: "127.0.0.1", port: args.wakePort },
    proxyAddr: { host: "127.0.0.1", port: 0 },
    routeApiUrl: `http://127.0.0.1:${args.apiPort}`,
    wakeUrl: `http://127.0.0.1:${args.wakePort}`,
    wakeSecret: args.wakeSecret,
    hatchApiUrl: args.simUrl,
    databaseUrl: undefined,
    dataDir: args.dataDir,
    apiKeys: [KEY],
    traefikApiUrls: [args.traefikApiUrl],
    idleTimeoutMs: 0,
    wakePageAfterMs: 0,
    vmResponseTimeoutMs: VM_RESPONSE_TIMEOUT_MS,
    logLevel: "warn",
  });
  const stack = await startStack(config, log, { api: true, wake: true });
  process.stdout.write(JSON.stringify({ api: stack.api!.url, wake: stack.wake!.url, pid: process.pid }) + "\n");
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (line.trim() !== "mem") return;
    collectGarbage();
    const m = process.memoryUsage();
    process.stdout.write(JSON.stringify({ rss: m.rss, heap: m.heapUsed, external: m.external }) + "\n");
  });
  rl.on("close", () => {
    const hard = setTimeout(() => process.exit(0), 10_000);
    hard.unref();
    void stack.close().finally(() => logFile.end(() => process.exit(0)));
  });
}

function collectGarbage() {
  v8.setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
}

// ---- processes ---------------------------------------------------------------------------------

/** Everything to stop on the way out, newest first. */
const stoppers: (() => Promise<void>)[] = [];
/** Synchronous last resort (process 'exit', signals): every child still alive is signalled, every temp dir removed. */
const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  stoppers.push(async () => {
    rmSync(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
  });
  return dir;
}

function killAll() {
  for (const c of children) c.kill("SIGTERM");
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
}

function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

function tsx(args: string[]): ChildProcess {
  return track(spawn(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), ...args], { cwd: root, stdio: ["pipe", "pipe", "inherit"] }));
}

/** Lines of a child's stdout, one at a time. */
function lines(child: ChildProcess): () => Promise<string> {
  const rl = createInterface({ input: child.stdout! });
  const queue: string[] = [];
  const waiting: ((l: string | undefined) => void)[] = [];
  rl.on("line", (l) => (waiting.length ? waiting.shift()!(l) : queue.push(l)));
  rl.on("close", () => {
    for (const w of waiting.splice(0)) w(undefined);
  });
  return async () => {
    if (queue.length) return queue.shift()!;
    const l = await withTimeout(new Promise<string | undefined>((r) => waiting.push(r)), 60_000, "child output");
    if (l === undefined) throw new Error("child exited without output");
    return l;
  };
}

/** Ends a child's stdin (its signal to stop) and waits for it; SIGKILL after `graceMs`. */
async function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.stdin?.end();
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}

/** `n` distinct loopback ports that were free a moment ago (held together, so none repeats). */
async function freePorts(n: number): Promise<number[]> {
  const servers = Array.from({ length: n }, () => createServer());
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.listen(0, "127.0.0.1", r))));
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

interface Front {
  name: string;
  port: number;
  apiUrl: string;
  pid: number;
  routerStatus(name: string): Promise<number>;
  waitForRouter(name: string, timeoutMs?: number): Promise<void>;
}

/**
 * Runs Traefik under a small shell that kills it when its stdin closes (this process exiting,
 * however it exits, closes it). The shell prints Traefik's pid for /proc.
 */
async function startTraefik(name: string, bin: string, staticConfig: Record<string, unknown>, port: number, apiPort: number, firstRouter: string): Promise<Front> {
  const dir = tempDir(`hatch-bench-sleep-${name}-`);
  const file = join(dir, "traefik.yml");
  writeFileSync(file, toYaml(staticConfig));
  const script = `"$0" "$@" >/dev/null 2>&1 & p=$!; echo $p; trap 'kill $p 2>/dev/null; exit 0' INT TERM HUP; read _; kill $p 2>/dev/null; wait $p`;
  const child = track(spawn("sh", ["-c", script, bin, `--configFile=${file}`], { stdio: ["pipe", "pipe", "ignore"] }));
  stoppers.push(() => stopChild(child));
  const pid = Number(await lines(child)());
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const routerStatus = (router: string) =>
    fetch(`${apiUrl}/api/http/routers/${router}`, { signal: AbortSignal.timeout(1000) }).then(
      (r) => r.status,
      () => 0,
    );
  const waitForRouter = async (router: string, timeoutMs = 20_000) => {
    const deadline = Date.now() + timeoutMs;
    while ((await routerStatus(router)) !== 200) {
      if (child.exitCode !== null) throw new Error(`Traefik (${name}) exited`);
      if (Date.now() > deadline) throw new Error(`Traefik (${name}) did not load router ${router} within ${timeoutMs} ms`);
      await delay(50);
    }
  };
  await waitForRouter(firstRouter, 30_000);
  return { name, port, apiUrl, pid, routerStatus, waitForRouter };
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU time of a process, in ms. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
}

/** Resident set size of a process, in bytes. */
function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : 0;
}

/** CPU ms used by each of these processes while `fn` runs. */
async function cpuDuring<T>(pids: Record<string, number>, fn: () => Promise<T>): Promise<{ result: T; cpu: Record<string, number> }> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuMs(p)]));
  const result = await fn();
  return { result, cpu: Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuMs(p) - before[k]!])) };
}

// ---- small helpers -----------------------------------------------------------------------------

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** The largest value, NaN for none (Math.max of an empty list is -Infinity). */
const maxOf = (xs: number[]) => (xs.length ? Math.max(...xs) : NaN);

function pct(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "–");
const int = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "–");
const ms = (x: number) => (Number.isFinite(x) ? (x >= 100 ? int(x) : f(x, 1)) : "–");

function table(head: string[], rows: (string | number)[][]) {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const w = head.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  for (const [k, r] of cells.entries()) {
    console.log("  " + r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join("  "));
    if (k === 0) console.log("  " + w.map((n) => "-".repeat(n)).join("  "));
  }
}

/** JSON over HTTP with a timeout; throws on a non-2xx answer. */
async function call(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<any> {
  const res = await fetch(url, {
    method,
    headers: { ...headers, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  const text = await res.text();
  if (!res.ok) throw Object.assign(new Error(`${method} ${url}: ${res.status} ${text.slice(0, 300)}`), { status: res.status, text });
  return text ? JSON.parse(text) : undefined;
}

// ---- the environment ---------------------------------------------------------------------------

interface Env {
  bin: string;
  simUrl: string;
  simPid: number;
  apiUrl: string;
  stackPid: number;
  stackMem(): Promise<{ rss: number; heap: number; external: number }>;
  hatch: Front;
  plain: Front;
  /** Traefik's static config as `npm start` writes it, on these ports, with the HTTP provider on the stack. */
  staticFor(port: number, apiPort: number): Record<string, any>;
  /** The VM parts 3 and 4 share, routed by both Traefiks. */
  streamVm: { id: string; ip: string; host: string };
}

async function createVm(simUrl: string): Promise<{ id: string; guest_ip: string }> {
  return call("POST", `${simUrl}/vms`, { restore_ms: RESTORE_MS });
}

/** A route through the API; resolves once the production Traefik routes it directly. */
async function createRoute(env: Pick<Env, "apiUrl" | "hatch">, vmId: string, subdomain: string): Promise<{ id: string; host: string }> {
  const route = await call("POST", `${env.apiUrl}/vms/${vmId}/routes`, { subdomain, target_port: GUEST_PORT }, { authorization: `Bearer ${KEY}` });
  await env.hatch.waitForRouter(`${route.id}@http`);
  await env.hatch.waitForRouter(`${route.id}-get@http`);
  return { id: route.id, host: `${subdomain}.${BASE}` };
}

async function startEnv(bin: string): Promise<Env> {
  const sim = tsx(["--sim"]);
  stoppers.push(() => stopChild(sim));
  const simInfo = JSON.parse(await lines(sim)()) as { url: string; pid: number };

  const [apiPort, wakePort, hatchPort, hatchApiPort, plainPort, plainApiPort] = (await freePorts(6)) as [number, number, number, number, number, number];
  const dataDir = tempDir("hatch-bench-sleep-stack-");
  const args: StackArgs = { apiPort, wakePort, simUrl: simInfo.url, traefikApiUrl: `http://127.0.0.1:${hatchApiPort}`, dataDir, wakeSecret: randomBytes(12).toString("hex") };
  const stack = tsx(["--stack", JSON.stringify(args)]);
  stoppers.push(async () => {
    await stopChild(stack);
    reportStackLog(join(dataDir, "stack.log"));
  });
  const stackOut = lines(stack);
  const stackInfo = JSON.parse(await stackOut()) as { api: string; wake: string; pid: number };
  const stackMem = async () => {
    stack.stdin!.write("mem\n");
    return JSON.parse(await stackOut()) as { rss: number; heap: number; external: number };
  };

  // The production static config (what `npm start` writes), once with the HTTP provider on the
  // stack and once with a file provider holding one plain router.
  const staticFor = (port: number, apiPort: number) =>
    buildStaticConfig(testConfig({ proxyAddr: { host: "127.0.0.1", port }, routeApiUrl: stackInfo.api }), { apiPort, providerUrl: `${stackInfo.api}/traefik/config` }) as Record<string, any>;
  const hatch = await startTraefik("hatch", bin, staticFor(hatchPort, hatchApiPort), hatchPort, hatchApiPort, "hatch-wake@http");

  const vm = await createVm(simInfo.url);
  const partial = { apiUrl: stackInfo.api, hatch };
  const route = await createRoute(partial, vm.id, "streams");
  const plainDir = tempDir("hatch-bench-sleep-plain-");
  const dynamic = join(plainDir, "dynamic.yml");
  writeFileSync(
    dynamic,
    toYaml({
      http: {
        // Traefik's API only through the router npm start adds (this Traefik reads no other file).
        routers: { plain: { entryPoints: ["web"], rule: `Host(\`${route.host}\`)`, service: "plain" }, ...(internalApiRoutes() as any).http.routers },
        services: { plain: { loadBalancer: { servers: [{ url: `http://${vm.guest_ip}:${GUEST_PORT}` }] } } },
      },
    }),
  );
  const plainStatic = staticFor(plainPort, plainApiPort);
  plainStatic.providers = { providersThrottleDuration: plainStatic.providers.providersThrottleDuration, file: { filename: dynamic } };
  const plain = await startTraefik("plain", bin, plainStatic, plainPort, plainApiPort, "plain@file");
  return { bin, simUrl: simInfo.url, simPid: simInfo.pid, apiUrl: stackInfo.api, stackPid: stackInfo.pid, stackMem, hatch, plain, staticFor, streamVm: { id: vm.id, ip: vm.guest_ip, host: route.host } };
}

const stackWarnings: string[] = [];
function reportStackLog(file: string) {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return;
  }
  const counts = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const j = JSON.parse(line) as { level: string; msg: string; component?: string };
      const k = `${j.level} ${j.component ? `[${j.component}] ` : ""}${j.msg}`;
      counts.set(k, (counts.get(k) ?? 0) + 1);
    } catch {
      /* a torn last line */
    }
  }
  for (const [k, n] of counts) stackWarnings.push(`${n}× ${k}`);
}

// ---- load: clients with unique rids -------------------------------------------------------------

interface Rec {
  rid: string;
  method: "GET" | "POST";
  bytes: number;
  t0: number;
  t1: number;
  /** Final status (0: no answer). */
  status: number;
  /** 307s followed. */
  redirects: number;
  /** An answer carried Server-Timing: wake (the request waited for a wake in the sidecar). */
  waited: boolean;
  hashOk: boolean;
  error?: string;
}

function httpOnce(
  port: number,
  host: string,
  path: string,
  method: string,
  body: Buffer | undefined,
  agent: Agent,
): Promise<{ status: number; headers: IncomingHttpHeaders; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: "127.0.0.1", port, path, method, agent, headers: { host, ...(body ? { "content-length": body.length, "content-type": "application/octet-stream" } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString() }));
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

const EMPTY_SHA = createHash("sha256").digest("hex");

/** One logical request: follows up to 5 redirects (307 keeps the method and body, as fetch does). */
async function oneRequest(port: number, host: string, rid: string, post: boolean, agent: Agent): Promise<Rec> {
  let body: Buffer | undefined;
  if (post) {
    body = Buffer.allocUnsafe(1024 + Math.floor(Math.random() * 63 * 1024) + 1);
    randomFillSync(body);
  }
  const sha = body ? createHash("sha256").update(body).digest("hex") : EMPTY_SHA;
  const rec: Rec = { rid, method: post ? "POST" : "GET", bytes: body?.length ?? 0, t0: performance.now(), t1: 0, status: 0, redirects: 0, waited: false, hashOk: false };
  let path = `/echo?rid=${rid}`;
  try {
    for (;;) {
      const r = await httpOnce(port, host, path, rec.method, body, agent);
      if (String(r.headers["server-timing"] ?? "").includes("wake;")) rec.waited = true;
      if (r.status === 307 && rec.redirects < 5 && typeof r.headers.location === "string") {
        rec.redirects += 1;
        path = r.headers.location;
        continue;
      }
      rec.status = r.status;
      if (r.status !== 200) rec.error = `${r.status} ${r.text.slice(0, 120)}`;
      else {
        const j = JSON.parse(r.text) as { body_sha256: string; body_length: number; method: string; query: Record<string, string> };
        rec.hashOk = j.body_sha256 === sha && j.body_length === rec.bytes && j.method === rec.method && j.query.rid === rid;
      }
      break;
    }
  } catch (err) {
    rec.error = (err as Error).message;
  }
  rec.t1 = performance.now();
  return rec;
}

/** `clients` closed-loop clients, each on its own kept-alive connection, half GETs, half POSTs. */
function startLoad(port: number, host: string, prefix: string, clients: number): { stop(): Promise<Rec[]> } {
  const recs: Rec[] = [];
  let stopped = false;
  let seq = 0;
  const loops = Array.from({ length: clients }, async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    while (!stopped) {
      recs.push(await oneRequest(port, host, `${prefix}${++seq}`, Math.random() < 0.5, agent));
      if (THINK_MS) await delay(THINK_MS);
    }
    agent.destroy();
  });
  return {
    async stop() {
      stopped = true;
      await Promise.all(loops);
      return recs;
    },
  };
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 30_000, everyMs = 20): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await delay(everyMs);
  }
  return performance.now();
}

const vmState = async (env: Env, id: string) => ((await call("GET", `${env.simUrl}/vms/${id}`)) as { state: string; wake_count: number });
const routersLive = async (env: Env, routeId: string) =>
  (await env.hatch.routerStatus(`${routeId}@http`)) === 200 && (await env.hatch.routerStatus(`${routeId}-get@http`)) === 200;

/** Every rid's count at the guest: executed once / never / more than once. */
async function ridCounts(env: Env, vmId: string): Promise<Record<string, number>> {
  return ((await call("GET", `${env.simUrl}/vms/${vmId}/requests`)) as { counts: Record<string, number> }).counts;
}

const overlaps = (r: Rec, windows: [number, number][]) => windows.some(([a, b]) => r.t0 < b && r.t1 > a);

function latencyRow(name: string, recs: Rec[]): (string | number)[] {
  const l = recs.map((r) => r.t1 - r.t0);
  return [name, int(recs.length), ms(pct(l, 50)), ms(pct(l, 99)), ms(maxOf(l))];
}

// ---- part 1: API sleeps --------------------------------------------------------------------------

interface Verdict {
  failed: string[];
}

async function partApi(env: Env, v: Verdict) {
  console.log(`\n1. Sleeps through POST /vms/{id}/sleep, ${SLEEPS}×, under load (${CLIENTS} clients, GET / POST of 1–64 KiB alternating at random, think ${THINK_MS} ms, restore ${RESTORE_MS} ms)`);
  const vm = await createVm(env.simUrl);
  const route = await createRoute(env, vm.id, "sleepapi");
  const load = startLoad(env.hatch.port, route.host, "a", CLIENTS);
  const windows: [number, number][] = [];
  const drains: number[] = [];
  const asleep: number[] = [];
  const back: number[] = [];
  const outcomes = new Map<string, number>();
  let recs: Rec[] = [];
  try {
    await delay(PRE_MS);
    for (let k = 0; k < SLEEPS; k++) {
      const s = performance.now();
      let outcome: string;
      try {
        await call("POST", `${env.apiUrl}/vms/${vm.id}/sleep`, undefined, { authorization: `Bearer ${KEY}` });
        outcome = "done";
      } catch (err) {
        const e = err as { status?: number; text?: string; message: string };
        outcome = e.status === 409 && e.text?.includes("sleep_cancelled") ? "cancelled" : `other: ${e.message.slice(0, 160)}`;
      }
      const slept = performance.now();
      drains.push(slept - s);
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      const running = await waitFor("vm running again", async () => (await vmState(env, vm.id)).state === "running");
      if (outcome === "done") asleep.push(running - slept);
      const live = await waitFor("direct routers back", () => routersLive(env, route.id), 30_000, 25);
      back.push(live - running);
      windows.push([s, live]);
      await delay(GAP_MS);
    }
  } finally {
    recs = await load.stop();
  }
  const counts = await ridCounts(env, vm.id);
  const info = await vmState(env, vm.id);
  const non2xx = recs.filter((r) => r.status !== 200);
  const notOnce = recs.filter((r) => counts[r.rid] !== 1);
  const badHash = recs.filter((r) => r.status === 200 && !r.hashOk);
  const redirects = recs.reduce((a, r) => a + r.redirects, 0);
  const done = outcomes.get("done") ?? 0;
  const cancelled = outcomes.get("cancelled") ?? 0;
  const other = [...outcomes].filter(([k]) => k !== "done" && k !== "cancelled");
  table(
    ["what", "measured", "goal"],
    [
      ["requests sent (GET / POST)", `${int(recs.length)} (${int(recs.filter((r) => r.method === "GET").length)} / ${int(recs.filter((r) => r.method === "POST").length)})`, ""],
      ["non-2xx answers or errors", int(non2xx.length), "0"],
      ["rids executed ≠ once at the guest", int(notOnce.length), "0"],
      ["body hash mismatches", int(badHash.length), "0"],
      ["307s seen", int(redirects), "0"],
      ["sleeps done / cancelled / other", `${done} / ${cancelled} / ${other.reduce((a, [, n]) => a + n, 0)}`, `${SLEEPS} / 0 / 0`],
      ["wakes (simulator wake_count)", int(info.wake_count), String(done)],
      ["POST /sleep duration (drain + snapshot) p50 / max ms", `${ms(pct(drains, 50))} / ${ms(maxOf(drains))}`, ""],
      ["asleep: snapshot done → running again, p50 / max ms", `${ms(pct(asleep, 50))} / ${ms(maxOf(asleep))}`, ""],
      ["running → direct routers back in Traefik, p50 / max ms", `${ms(pct(back, 50))} / ${ms(maxOf(back))}`, ""],
    ],
  );
  for (const [k, n] of other) console.log(`  sleep answer ${n}×: ${k}`);
  const waited = recs.filter((r) => r.waited && r.status === 200);
  const baseline = recs.filter((r) => !overlaps(r, windows) && r.status === 200);
  const between = recs.filter((r) => !r.waited && overlaps(r, windows) && r.status === 200);
  table(
    ["latency (ms)", "n", "p50", "p99", "max"],
    [
      latencyRow("running VM, outside any sleep (baseline)", baseline),
      latencyRow("held through a sleep + wake (Server-Timing: wake)", waited),
      latencyRow("during a sleep, not held (before the drain, or via sidecar after)", between),
    ],
  );
  const wl = waited.map((r) => r.t1 - r.t0);
  const bl = baseline.map((r) => r.t1 - r.t0);
  console.log(
    `  held − baseline: p50 +${ms(pct(wl, 50) - pct(bl, 50))} ms, p99 +${ms(pct(wl, 99) - pct(bl, 99))} ms (a held request waits for the rest of the drain, the snapshot and the restore: ${ms(pct(drains, 50))} + ${ms(pct(asleep, 50))} ms at p50)`,
  );
  if (non2xx.length) {
    // When the failures came: each belongs to the last sleep that began before its answer, and is
    // placed against that sleep's steps (asked, answered = snapshotted, VM running, direct routers back).
    const at = non2xx.map((r) => {
      let k = -1;
      for (let i = 0; i < windows.length; i++) if (windows[i]![0] <= r.t1) k = i;
      return k < 0 ? "before the first sleep" : `sleep ${k + 1}: answer ${ms(r.t1 - windows[k]![0])} ms after POST /sleep, ${ms(r.t1 - windows[k]![1])} ms after its direct routers were back`;
    });
    const bySleep = new Map<string, number>();
    for (const a of at) bySleep.set(a.split(":")[0]!, (bySleep.get(a.split(":")[0]!) ?? 0) + 1);
    console.log(`  failures by sleep: ${[...bySleep].map(([k, n]) => `${k} ${n}×`).join(", ")}`);
    for (const a of at.slice(0, 5)) console.log(`  a failure: ${a}`);
  }
  for (const r of [...non2xx, ...notOnce, ...badHash].slice(0, 5)) console.log(`  e.g. ${r.rid} ${r.method} ${r.bytes} B: status ${r.status}, ran ${counts[r.rid] ?? 0}×, ${r.error ?? (r.hashOk ? "" : "hash mismatch")}`);
  if (non2xx.length || notOnce.length || badHash.length) v.failed.push("part 1: a request was lost, failed, ran twice or came back wrong");
  if (done !== SLEEPS) v.failed.push(`part 1: ${SLEEPS - done} sleep(s) not done`);
  summary.api = { recs: recs.length, non2xx: non2xx.length, notOnce: notOnce.length, badHash: badHash.length, done, cancelled, wakes: info.wake_count, drain50: pct(drains, 50), drainMax: maxOf(drains), base: [pct(bl, 50), pct(bl, 99)], held: [pct(wl, 50), pct(wl, 99), maxOf(wl)] };
}

// ---- part 2: sleeps behind hatch-proxy's back -----------------------------------------------------

async function partExternal(env: Env, v: Verdict) {
  console.log(`\n2. Sleeps made on the platform (the simulator's POST /vms/{id}/snapshot), ${SLEEPS}×, same load, clients follow 307s; VM sync 5 s (default), Traefik poll 1 s, HATCH_VM_RESPONSE_TIMEOUT ${VM_RESPONSE_TIMEOUT_MS} ms`);
  const vm = await createVm(env.simUrl);
  const route = await createRoute(env, vm.id, "sleepext");
  const load = startLoad(env.hatch.port, route.host, "e", CLIENTS);
  const snaps: number[] = [];
  const windows: [number, number][] = [];
  const toRunning: number[] = [];
  let recs: Rec[] = [];
  try {
    await delay(PRE_MS);
    for (let k = 0; k < SLEEPS; k++) {
      await waitFor("direct routers live before the snapshot", () => routersLive(env, route.id), 30_000, 25);
      const s = performance.now();
      await call("POST", `${env.simUrl}/vms/${vm.id}/snapshot`);
      snaps.push(s);
      await delay(20);
      const running = await waitFor("vm running again", async () => (await vmState(env, vm.id)).state === "running");
      toRunning.push(running - s);
      const live = await waitFor("direct routers back", () => routersLive(env, route.id), 30_000, 25);
      windows.push([s, live]);
      await delay(EXT_GAP_MS);
    }
  } finally {
    recs = await load.stop();
  }
  const counts = await ridCounts(env, vm.id);
  const info = await vmState(env, vm.id);
  const failed = recs.filter((r) => r.status !== 200);
  const fGet = failed.filter((r) => r.method === "GET");
  const fPost = failed.filter((r) => r.method === "POST");
  const posts = recs.filter((r) => r.method === "POST").length;
  // A GET may run twice: one the VM froze mid-answer is asked again after the wake (HTTP lets a
  // client or proxy repeat a GET). A POST must never run twice, nor a successful one not at all.
  const okNotOnce = recs.filter((r) => r.status === 200 && (r.method === "POST" ? counts[r.rid] !== 1 : !counts[r.rid]));
  const twice = recs.filter((r) => r.method === "POST" && (counts[r.rid] ?? 0) > 1);
  const getsTwice = recs.filter((r) => r.method === "GET" && (counts[r.rid] ?? 0) > 1);
  const badHash = recs.filter((r) => r.status === 200 && !r.hashOk);
  const redirected = recs.filter((r) => r.redirects > 0);
  // Each failure belongs to the last snapshot before its answer.
  const perSleep = snaps.map(() => [] as number[]);
  for (const r of failed) {
    let k = -1;
    for (let i = 0; i < snaps.length; i++) if (snaps[i]! <= r.t1) k = i;
    if (k >= 0) perSleep[k]!.push(r.t1 - snaps[k]!);
  }
  const hit = perSleep.filter((xs) => xs.length);
  const spans = hit.map((xs) => Math.max(...xs) - Math.min(...xs));
  const lasts = hit.map((xs) => Math.max(...xs));
  const kinds = new Map<string, number>();
  for (const r of failed) {
    const k = `${r.method} ${(r.error ?? String(r.status)).replace(/rid=\S+/, "rid=…").slice(0, 90)}`;
    kinds.set(k, (kinds.get(k) ?? 0) + 1);
  }
  table(
    ["what", "measured", "goal"],
    [
      ["requests sent (GET / POST)", `${int(recs.length)} (${int(recs.length - posts)} / ${int(posts)})`, ""],
      ["failed GETs", int(fGet.length), "0"],
      ["failed POSTs", `${int(fPost.length)} (${f((fPost.length / Math.max(1, posts)) * 100, 2)}% of POSTs)`, ""],
      ["  of which ran at the guest (answer lost) / never ran", `${fPost.filter((r) => counts[r.rid] === 1).length} / ${fPost.filter((r) => !counts[r.rid]).length}`, ""],
      ["successful POSTs that ran ≠ once, GETs never run; POSTs run twice", `${okNotOnce.length}; ${twice.length}`, "0; 0"],
      ["GETs run twice (frozen mid-answer, asked again after the wake)", int(getsTwice.length), ""],
      ["body hash mismatches", int(badHash.length), "0"],
      ["requests redirected (307, GET fallback) / 307s", `${int(redirected.length)} / ${int(recs.reduce((a, r) => a + r.redirects, 0))}`, ""],
      ["sleeps with failures", `${hit.length} of ${SLEEPS}`, ""],
      ["failing window per such sleep: first → last failure, p50 / max ms", `${ms(pct(spans, 50))} / ${ms(maxOf(spans))}`, ""],
      ["last failure after the snapshot, p50 / max ms", `${ms(pct(lasts, 50))} / ${ms(maxOf(lasts))}`, ""],
      ["snapshot → running again, p50 / max ms", `${ms(pct(toRunning, 50))} / ${ms(maxOf(toRunning))}`, ""],
      ["wakes (simulator wake_count)", int(info.wake_count), String(SLEEPS)],
    ],
  );
  for (const [k, n] of [...kinds].sort((a, b) => b[1] - a[1]).slice(0, 6)) console.log(`  failure ${n}×: ${k}`);
  if (fPost.length) console.log("  (a POST in flight when the platform cut the VM was already written, so Traefik's retry may not repeat it; a GET is saved by the errors fallback)");
  const baseline = recs.filter((r) => !overlaps(r, windows) && r.status === 200);
  const viaFallback = recs.filter((r) => r.redirects > 0 && r.status === 200);
  const waitedPost = recs.filter((r) => r.redirects === 0 && r.method === "POST" && r.status === 200 && overlaps(r, windows));
  table(
    ["latency (ms)", "n", "p50", "p99", "max"],
    [
      latencyRow("running VM, outside any sleep (baseline)", baseline),
      latencyRow("GETs woken through the fallback (followed a 307)", viaFallback),
      latencyRow("POSTs answered during a sleep window", waitedPost),
    ],
  );
  if (fGet.length || twice.length || badHash.length || okNotOnce.length) v.failed.push("part 2: a GET failed, a POST ran twice, or a request came back wrong");
  const fl = viaFallback.map((r) => r.t1 - r.t0);
  summary.ext = {
    recs: recs.length,
    fGet: fGet.length,
    fPost: fPost.length,
    posts,
    twice: twice.length,
    hit: hit.length,
    span50: pct(spans, 50),
    spanMax: maxOf(spans),
    last50: pct(lasts, 50),
    lastMax: maxOf(lasts),
    run50: pct(toRunning, 50),
    runMax: maxOf(toRunning),
    fallback: [pct(fl, 50), pct(fl, 99)],
  };
}

// ---- part 3: WebSockets and event streams through the sidecar ---------------------------------------

interface Path {
  name: string;
  /** ws:// or http:// base URL */
  port: number;
  host: string;
  ip: string;
  /** Processes on this path besides the guest, for CPU per message. */
  procs: Record<string, number>;
}

function openWs(p: Path, timeoutMs = 15_000): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${p.ip}:${p.port}/ws`, { headers: { host: p.host }, handshakeTimeout: timeoutMs, perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
  });
}

async function openMany(p: Path, n: number): Promise<WebSocket[]> {
  const out: WebSocket[] = [];
  for (let i = 0; i < n; i += 50) out.push(...(await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => openWs(p)))));
  return out;
}

/** Ping-pong of 32-byte messages on `n` connections for `seconds`: round trips per second. */
async function wsEcho(p: Path, n: number, seconds: number): Promise<{ rate: number; total: number }> {
  const sockets = await openMany(p, n);
  const msg = Buffer.alloc(32, 120);
  let total = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(
    sockets.map(
      (ws) =>
        new Promise<void>((resolve) => {
          ws.on("message", () => {
            total += 1;
            if (performance.now() < end) ws.send(msg);
            else resolve();
          });
          ws.once("close", () => resolve());
          ws.send(msg);
        }),
    ),
  );
  const elapsed = (performance.now() - t0) / 1000;
  for (const ws of sockets) ws.terminate();
  return { rate: total / elapsed, total };
}

/** `n` concurrent SSE streams (one tick every SSE_MS ms each) for `seconds`: events received per second. */
async function sse(p: Path, n: number, seconds: number): Promise<{ rate: number; total: number; failed: number }> {
  let total = 0;
  let failed = 0;
  const reqs: ReturnType<typeof request>[] = [];
  const opened = Array.from(
    { length: n },
    () =>
      new Promise<void>((resolve) => {
        const req = request({ host: p.ip, port: p.port, path: `/events?ms=${SSE_MS}`, agent: false, headers: { host: p.host, accept: "text/event-stream" } }, (res) => {
          if (res.statusCode !== 200) failed += 1;
          resolve();
          let last = 0;
          res.on("data", (c: Buffer) => {
            // Events end with a blank line; a "\n\n" may straddle two chunks.
            if (last === 10 && c[0] === 10) total += 1;
            let i = -1;
            while ((i = c.indexOf("\n\n", i + 1)) !== -1) total += 1;
            last = c[c.length - 1]!;
          });
          res.on("error", () => {});
        });
        req.on("error", () => {
          failed += 1;
          resolve();
        });
        req.end();
        reqs.push(req);
      }),
  );
  await withTimeout(Promise.all(opened), 30_000, "SSE streams opening");
  const before = total;
  const t0 = performance.now();
  await delay(seconds * 1000);
  const got = total - before;
  const elapsed = (performance.now() - t0) / 1000;
  for (const r of reqs) r.destroy();
  return { rate: got / elapsed, total: got, failed };
}

/** Growth per idle WebSocket held open through Traefik → sidecar → guest, after a full GC in the sidecar. */
async function idleWebSockets(env: Env, prod: Path): Promise<IdleRow | undefined> {
  if (IDLE_WS <= 0) return undefined;
  // The upgrade path's first use (code, pools) is not a per-connection cost.
  for (const ws of await openMany(prod, 50)) ws.terminate();
  await delay(500);
  const m0 = await env.stackMem();
  const t0rss = rssOf(env.hatch.pid);
  const t = performance.now();
  const sockets = await openMany(prod, IDLE_WS);
  const openMs = performance.now() - t;
  await delay(1000);
  const m1 = await env.stackMem();
  const t1rss = rssOf(env.hatch.pid);
  const open = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  for (const ws of sockets) ws.terminate();
  await delay(500);
  return {
    n: IDLE_WS,
    open,
    openMs,
    sidecarRss: (m1.rss - m0.rss) / IDLE_WS,
    sidecarHeap: (m1.heap - m0.heap) / IDLE_WS,
    sidecarExternal: (m1.external - m0.external) / IDLE_WS,
    traefikRss: (t1rss - t0rss) / IDLE_WS,
  };
}

function printIdle(idle: IdleRow) {
  console.log(
    `  ${idle.n} idle WebSockets through Traefik → sidecar → guest (measured right after setup, before part 1, so freed memory does not hide growth; ` +
      `opened 50 at a time in ${int(idle.openMs)} ms; ${idle.open} still open after 1 s); growth per connection:`,
  );
  table(
    ["process", "RSS KiB/conn", "JS heap KiB/conn", "external KiB/conn"],
    [
      ["sidecar (stack process; heap and external after a full GC)", f(idle.sidecarRss / 1024, 1), f(idle.sidecarHeap / 1024, 1), f(idle.sidecarExternal / 1024, 1)],
      ["Traefik (Go, no GC forced)", f(idle.traefikRss / 1024, 1), "", ""],
    ],
  );
}

interface IdleRow {
  n: number;
  open: number;
  openMs: number;
  sidecarRss: number;
  sidecarHeap: number;
  sidecarExternal: number;
  traefikRss: number;
}

async function partStreams(env: Env, v: Verdict) {
  const { ip, host } = env.streamVm;
  const paths: Path[] = [
    { name: "client → guest (direct)", port: GUEST_PORT, host, ip, procs: {} },
    { name: "client → Traefik (plain router) → guest", port: env.plain.port, host, ip: "127.0.0.1", procs: { traefik: env.plain.pid } },
    { name: "client → Traefik → sidecar → guest (production)", port: env.hatch.port, host, ip: "127.0.0.1", procs: { traefik: env.hatch.pid, sidecar: env.stackPid } },
  ];
  console.log(`\n3. WebSockets and event streams (load generator: this process; guest: the simulator's process; sidecar: the stack's process)`);
  const idle = idleProbe;
  // Warm-up: JIT and connection paths of every hop.
  for (const p of paths) await wsEcho(p, 8, 0.5);
  const wsRows: { p: Path; rate: number; cpu: Record<string, number>; total: number }[] = [];
  for (const p of paths) {
    const { result, cpu } = await cpuDuring({ ...p.procs, guest: env.simPid }, () => wsEcho(p, WS_CONNECTIONS, STREAM_SECONDS));
    wsRows.push({ p, rate: result.rate, cpu, total: result.total });
  }
  const perMsg = (cpu: Record<string, number>, k: string, total: number) => (k in cpu ? f((cpu[k]! * 1000) / Math.max(1, total), 1) : "");
  console.log(`  WebSocket echo: ${WS_CONNECTIONS} connections, ping-pong of 32-byte messages, ${STREAM_SECONDS} s each`);
  table(
    ["path", "round trips/s", "vs direct", "Traefik CPU µs/round trip", "sidecar CPU µs/round trip", "guest CPU µs/round trip"],
    wsRows.map((r) => [r.p.name, int(r.rate), f(r.rate / wsRows[0]!.rate, 2), perMsg(r.cpu, "traefik", r.total), perMsg(r.cpu, "sidecar", r.total), perMsg(r.cpu, "guest", r.total)]),
  );
  const wsProd = wsRows[2]!.rate;
  console.log(`  production / direct ${f(wsProd / wsRows[0]!.rate, 2)}; production / plain Traefik ${f(wsProd / wsRows[1]!.rate, 2)}`);

  const sseRows: { p: Path; rate: number; cpu: Record<string, number>; total: number; failed: number }[] = [];
  for (const p of paths) {
    const { result, cpu } = await cpuDuring({ ...p.procs, guest: env.simPid }, () => sse(p, SSE_STREAMS, STREAM_SECONDS));
    sseRows.push({ p, ...result, cpu });
  }
  const offered = (SSE_STREAMS * 1000) / SSE_MS;
  console.log(`  Server-sent events: ${SSE_STREAMS} streams of /events?ms=${SSE_MS} (${int(offered)} events/s offered), ${STREAM_SECONDS} s each`);
  table(
    ["path", "events/s", "vs direct", "streams failed", "Traefik CPU µs/event", "sidecar CPU µs/event", "guest CPU µs/event"],
    sseRows.map((r) => [r.p.name, int(r.rate), f(r.rate / sseRows[0]!.rate, 2), r.failed, perMsg(r.cpu, "traefik", r.total), perMsg(r.cpu, "sidecar", r.total), perMsg(r.cpu, "guest", r.total)]),
  );
  if (idle) printIdle(idle);
  if (wsRows.some((r) => r.total === 0) || sseRows.some((r) => r.failed) || (idle && idle.open !== idle.n)) v.failed.push("part 3: a WebSocket or event stream path did not work");

  summary.streams = {
    ws: wsRows.map((r) => r.rate),
    wsSidecarUs: (wsRows[2]!.cpu.sidecar! * 1000) / Math.max(1, wsRows[2]!.total),
    sse: sseRows.map((r) => r.rate),
    sseSidecarUs: (sseRows[2]!.cpu.sidecar! * 1000) / Math.max(1, sseRows[2]!.total),
    idle,
  };
}

// ---- part 4: the direct path's routing vs a plain router ---------------------------------------------

/** autocannon in its own process (tracked, so it dies with this one). */
const cannon = (url: string, host: string, seconds: number, post?: string): Promise<Cannon> =>
  autocannon(url, { connections: CONNECTIONS, seconds, host, post, onChild: (c) => void track(c) });

async function partRouting(env: Env, v: Verdict) {
  const { host } = env.streamVm;
  const body = "x".repeat(1024);
  console.log(`\n4. The direct path: production Traefik config vs one plain router, same static config (metrics, access log), same guest; autocannon ${CONNECTIONS} connections, ${SECONDS} s per run, 2 rounds interleaved, 1 KiB POST bodies`);
  // The production config exactly as the stack serves it, with one change: the VMs' serversTransport
  // keeps 200 idle connections per host (Traefik's default transport does; a declared one keeps
  // Go's default of 2 unless told otherwise).
  const served = (await call("GET", `${env.apiUrl}/traefik/config`)) as { http: { serversTransports?: Record<string, Record<string, unknown>> } };
  const transport = served.http.serversTransports?.[VM_TRANSPORT];
  const idleConns = transport?.maxIdleConnsPerHost as number | undefined;
  // Only worth a third Traefik while the production transport keeps fewer.
  const tune = transport !== undefined && !(typeof idleConns === "number" && idleConns >= 200);
  if (transport) transport.maxIdleConnsPerHost = 200;
  const dir = tempDir("hatch-bench-sleep-tuned-");
  (served as any).http.routers = { ...(served as any).http.routers, ...(internalApiRoutes() as any).http.routers };
  writeFileSync(join(dir, "dynamic.yml"), toYaml(served));
  const [port, apiPort] = (await freePorts(2)) as [number, number];
  const tunedStatic = env.staticFor(port, apiPort);
  tunedStatic.providers = { providersThrottleDuration: tunedStatic.providers.providersThrottleDuration, file: { filename: join(dir, "dynamic.yml") } };
  const tuned = tune ? await startTraefik("tuned", env.bin, tunedStatic, port, apiPort, `hatch-streams@file`) : undefined;
  console.log(
    `  (the production config's ${VM_TRANSPORT} serversTransport has maxIdleConnsPerHost ${idleConns ?? "unset: Go's default of 2 idle connections per VM"}` +
      `${tune ? `; third row: the same config with 200, as Traefik's default transport keeps` : ""})`,
  );
  const fronts = tuned ? [env.hatch, env.plain, tuned] : [env.hatch, env.plain];
  for (const t of fronts) await cannon(`http://127.0.0.1:${t.port}/echo`, host, 1);
  type Row = Cannon & { front: string; method: string; cpuUs: number };
  const rows: Row[] = [];
  for (let round = 0; round < 2; round++) {
    for (const method of ["GET", "POST"]) {
      for (const t of fronts) {
        const { result, cpu } = await cpuDuring({ traefik: t.pid }, () => cannon(`http://127.0.0.1:${t.port}/echo`, host, SECONDS, method === "POST" ? body : undefined));
        rows.push({ ...result, front: t.name, method, cpuUs: (cpu.traefik! * 1000) / Math.max(1, result.total) });
      }
    }
  }
  const med = (front: string, method: string, k: keyof Row) => {
    const xs = rows.filter((r) => r.front === front && r.method === method).map((r) => r[k] as number);
    return xs.reduce((a, b) => a + b, 0) / xs.length;
  };
  const out: (string | number)[][] = [];
  const ratios: Record<string, number> = {};
  for (const method of ["GET", "POST"]) {
    for (const front of fronts.map((t) => t.name).sort((a, b) => ["plain", "hatch", "tuned"].indexOf(a) - ["plain", "hatch", "tuned"].indexOf(b))) {
      const label = { plain: "plain router (baseline)", hatch: "production config", tuned: "production, maxIdleConnsPerHost 200" }[front]!;
      out.push([
        `${method} ${label}`,
        int(med(front, method, "rps")),
        f(med(front, method, "p50"), 1),
        f(med(front, method, "p99"), 1),
        f(med(front, method, "cpuUs"), 0),
        int(rows.filter((r) => r.front === front && r.method === method).reduce((a, r) => a + r.errors, 0)),
        f((ratios[`${method} ${front}`] = med(front, method, "rps") / med("plain", method, "rps")), 2),
      ]);
    }
  }
  table(["run (mean of 2)", "req/s", "p50 ms", "p99 ms", "Traefik CPU µs/req", "errors", "ratio"], out);
  if (rows.some((r) => r.errors)) v.failed.push("part 4: errors on the direct path");
  summary.routing = {
    ratios,
    rows: Object.fromEntries(fronts.map((t) => t.name).flatMap((fr) => ["GET", "POST"].map((m) => [`${m} ${fr}`, [med(fr, m, "rps"), med(fr, m, "p50"), med(fr, m, "p99"), med(fr, m, "cpuUs")]]))),
  };
}

// ---- main --------------------------------------------------------------------------------------------

const summary: Record<string, any> = {};
let idleProbe: IdleRow | undefined;

async function main() {
  await assertBenchNetwork();
  const bin = findTraefikBinary(testConfig({ traefikBin: process.env.TRAEFIK_BIN || undefined }));
  console.log(
    `sleep benchmark (node ${process.version}, loadavg ${os.loadavg()[0]!.toFixed(1)} on ${os.cpus().length} cores; parts ${PARTS.join(",")}; ` +
      `processes: load generator = this one, stack (API + sidecar, PGlite) / simulator (guests) / 2 Traefik each their own; ` +
      (benchNetwork() === "bridge"
        ? `VMs on the bridge network, 10.66.1.0/24: a snapshot pauses the VM for ${SNAPSHOT_MS ?? "the simulator's default"}${SNAPSHOT_MS === undefined ? "" : " ms"} (a black hole), then unlinks it)`
        : "VMs on loopback, 127.66.1.N)"),
  );
  if (!bin) {
    console.log("no Traefik binary found (TRAEFIK_BIN, PATH, or `bash scripts/traefik.sh`): every part of this benchmark needs one; skipped");
    return;
  }
  const t0 = performance.now();
  const v: Verdict = { failed: [] };
  const env = await startEnv(bin);
  console.log(`Traefik ${bin}; setup ${f((performance.now() - t0) / 1000, 1)} s`);
  const run = async (name: string, fn: (env: Env, v: Verdict) => Promise<void>) => {
    if (!PARTS.includes(name)) return;
    const t = performance.now();
    try {
      await fn(env, v);
    } catch (err) {
      console.log(`  part ${name} stopped: ${(err as Error).stack ?? err}`);
      v.failed.push(`part ${name}: ${(err as Error).message}`);
    }
    console.log(`  (part ${name}: ${f((performance.now() - t) / 1000, 1)} s)`);
    await mem(`after part ${name}`).catch(() => {});
  };
  const mem = async (when: string) => {
    const m = await env.stackMem();
    console.log(`  stack process ${when}: RSS ${int(m.rss / 2 ** 20)} MiB, heap ${int(m.heap / 2 ** 20)} MiB, external ${int(m.external / 2 ** 20)} MiB (after a full GC)`);
  };
  await mem("after setup");
  // Part 3's memory probe runs first, on a fresh sidecar: after parts 1 and 2, freed memory would
  // absorb the growth and the RSS figure would say nothing.
  if (PARTS.includes("streams")) {
    idleProbe = await idleWebSockets(env, { name: "production", port: env.hatch.port, host: env.streamVm.host, ip: "127.0.0.1", procs: {} }).catch((err: Error) => {
      console.log(`  idle WebSocket probe failed: ${err.message}`);
      v.failed.push("part 3: idle WebSockets could not be opened");
      return undefined;
    });
  }
  await run("api", partApi);
  await run("external", partExternal);
  await run("streams", partStreams);
  await run("routing", partRouting);
  await shutdown();
  if (stackWarnings.length) {
    console.log("\nstack log (warn and above):");
    for (const w of stackWarnings.slice(0, 12)) console.log(`  ${w.slice(0, 220)}`);
  }
  console.log(`\ntotal ${f((performance.now() - t0) / 1000, 1)} s`);
  if (process.env.BENCH_JSON) console.log(JSON.stringify(summary));
  writeSummary(summary);
  if (v.failed.length) {
    console.log(`\nFAILED:\n  ${v.failed.join("\n  ")}`);
    process.exitCode = 1;
  }
}

let shuttingDown: Promise<void> | undefined;
function shutdown(): Promise<void> {
  shuttingDown ??= (async () => {
    for (const s of stoppers.reverse()) await s().catch(() => {});
    stoppers.length = 0;
  })();
  return shuttingDown;
}

const mode = process.argv[2];
if (mode === "--sim") await simMode();
else if (mode === "--stack") await stackMode(JSON.parse(process.argv[3]!) as StackArgs);
else {
  process.on("exit", killAll);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(sig, () => {
      console.log(`\n${sig}: stopping`);
      killAll();
      process.exit(130);
    });
  }
  const watchdog = setTimeout(() => {
    console.log(`\nbenchmark still running after ${WATCHDOG_MS / 1000} s (BENCH_TIMEOUT_S): stopping`);
    killAll();
    process.exit(1);
  }, WATCHDOG_MS);
  watchdog.unref();
  try {
    await main();
  } catch (err) {
    console.error((err as Error).message?.startsWith("BENCH_SIM_NETWORK") ? (err as Error).message : err);
    await shutdown();
    process.exitCode = 1;
  }
}
