/**
 * Wake sidecar benchmark: `npx tsx bench/wake.ts` (BENCH_SECONDS=5 per hot-path run).
 * 1. Hot path, autocannon in its own process, the guest VM in its own process:
 *    client → guest directly (the limit) vs client → sidecar → guest vs a minimal node:http
 *    proxy, and (when a Traefik binary is found) client → Traefik → guest vs client → Traefik →
 *    sidecar → guest; req/s, p50, p99, CPU per request, ratios; then the latency one request at a time.
 * 2. Cold path: N = 1, 100, 1000 concurrent POSTs (distinct 64 KiB bodies) to one sleeping VM
 *    (restore 500 ms; the simulator in its own process, reached over its REST API with the Hatch
 *    client), fired from a separate client process: restores (must be 1), errors (must
 *    be 0, body hashes checked), first/last response after the burst minus the restore time, and
 *    the sidecar process's peak RSS.
 * BENCH_PARTS=hot or cold runs one half. BENCH_SIM_NETWORK=loopback (default: VMs on 127.77.x.N) or
 * bridge (bench/network.ts: each VM in a network namespace of its own on a veth, on a Linux bridge,
 * 10.77.x.0/24, as on Hatch; needs a network namespace of its own: `npm run bench -- wake
 * --network=bridge` or `--network=both`). On the bridge both halves run there: the hot path's guest
 * and the cold path's VMs sit behind the bridge, so every request crosses two veths and the bridge,
 * and a restore rebuilds the VM's namespace and link. Internal modes: `--guest` (hosts the VM),
 * `--sim` (the cold path's simulator), `--cold-client` (fires a burst), `--seq-client`.
 */
import { autocannon, type Cannon } from "./autocannon.ts";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { Agent, createServer, request } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import v8 from "node:v8";
import { runInNewContext } from "node:vm";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { stringify } from "yaml";
import { findTraefikBinary } from "../src/traefik/binary.ts";
import { testConfig } from "../src/config.ts";
import { openDatabase } from "../src/db/client.ts";
import { insertRoute } from "../src/db/routes.repo.ts";
import { silentLogger } from "../src/log.ts";
import { capYoungGeneration } from "../src/young-generation.ts";
import type { Vm, VmDirectory, VmPlatform } from "../src/vms/platform.ts";
import { staticDirectory } from "./directory.ts";
import { createHatchClient } from "../src/vms/hatch-client.ts";
import { createSimulator } from "../src/vms/simulator/index.ts";
import { createWakeProxy, startWakeServer } from "../src/wake/proxy.ts";
import { assertBenchNetwork, benchNetwork, benchSimOptions, writeSummary } from "./network.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);
const RESTORE_MS = 500;
const BODY_BYTES = 64 * 1024;
const HOST = "bench.hatch.local";
const SIDE_HOST = "side.hatch.local";

// ---- child modes ------------------------------------------------------------------------------

/** Runs a simulator with its REST API and prints the API's URL; exits when stdin closes. */
async function simMode() {
  const sim = await createSimulator({ ...benchSimOptions("127.77.9"), restoreMs: RESTORE_MS });
  const api = await sim.listen({ host: "127.0.0.1", port: 0 });
  process.stdout.write(JSON.stringify({ url: api.url }) + "\n");
  process.stdin.resume();
  process.stdin.on("end", () => void sim.close().then(() => process.exit(0)));
}

/** Hosts one running simulated VM and prints where it listens; exits when stdin closes. */
async function guestMode() {
  const sim = await createSimulator({ ...benchSimOptions("127.77.8"), restoreMs: 0 });
  const vm = await sim.createVm();
  process.stdout.write(JSON.stringify({ id: vm.id, ip: vm.guest_ip, port: 8080 }) + "\n");
  process.stdin.resume();
  process.stdin.on("end", () => void sim.close().then(() => process.exit(0)));
}

/** Fires `n` concurrent POSTs with distinct bodies at once; prints timings and errors as JSON. */
async function coldClientMode(url: string, host: string, n: number, bodyBytes: number) {
  const bodies = Array.from({ length: n }, () => randomBytes(bodyBytes));
  const hashes = bodies.map((b) => createHash("sha256").update(b).digest("hex"));
  const t0 = performance.now();
  const done: number[] = [];
  const sent: number[] = [];
  let errors = 0;
  const samples: string[] = [];
  await Promise.all(
    bodies.map(
      (body, i) =>
        new Promise<void>((resolve) => {
          const fail = (why: string) => {
            errors += 1;
            if (samples.length < 3) samples.push(why);
            resolve();
          };
          const req = request(url, { method: bodyBytes ? "POST" : "GET", agent: false, headers: bodyBytes ? { host, "content-length": body.length } : { host } }, (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("error", (e) => fail(e.message));
            res.on("end", () => {
              done.push(performance.now() - t0);
              const text = Buffer.concat(chunks).toString();
              if (res.statusCode !== 200) return fail(`${res.statusCode} ${text.slice(0, 200)}`);
              if (JSON.parse(text).body_sha256 !== hashes[i]) return fail("body hash mismatch");
              resolve();
            });
          });
          req.on("error", (e) => fail(e.message));
          req.on("finish", () => sent.push(performance.now() - t0));
          req.end(bodyBytes ? body : undefined);
        }),
    ),
  );
  done.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({ first: done[0], last: done.at(-1), allSent: Math.max(...sent), errors, samples }) + "\n");
}

/** Sends `n` GETs one after another on one kept-alive connection; prints p50/p99 in µs as JSON. */
async function seqClientMode(url: string, host: string, n: number) {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const once = () =>
    new Promise<number>((resolve, reject) => {
      const t0 = process.hrtime.bigint();
      request(url, { agent, headers: { host } }, (res) => {
        res.resume();
        res.on("end", () => (res.statusCode === 200 ? resolve(Number(process.hrtime.bigint() - t0) / 1000) : reject(new Error(`status ${res.statusCode}`))));
      })
        .on("error", reject)
        .end();
    });
  for (let i = 0; i < 200; i++) await once();
  const us: number[] = [];
  for (let i = 0; i < n; i++) us.push(await once());
  us.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({ p50: us[Math.floor(n * 0.5)], p99: us[Math.floor(n * 0.99)] }) + "\n");
  agent.destroy();
}

// ---- helpers ----------------------------------------------------------------------------------

function tsx(args: string[]): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), ...args], { cwd: root, stdio: ["pipe", "pipe", "inherit"] });
}

/**
 * Closes a child's stdin (its signal to close) and waits for it to exit: on the bridge the guest
 * child's simulator must have removed its bridge before the cold path's simulator makes its own.
 */
async function stopChild(child: ChildProcess, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.stdin!.end();
  const timer = setTimeout(() => child.kill("SIGTERM"), graceMs);
  await exited;
  clearTimeout(timer);
}

async function firstLine(child: ChildProcess): Promise<string> {
  const rl = createInterface({ input: child.stdout! });
  for await (const line of rl) return line;
  throw new Error("child exited without output");
}

/** autocannon in its own process, so it does not share an event loop with what it measures. */
const cannon = (url: string, host: string | undefined, seconds = SECONDS): Promise<Cannon> => autocannon(url, { connections: CONNECTIONS, seconds, host });

/** A directory that reads the simulator on demand (the cold path needs real states). */
function liveDirectory(platform: VmPlatform): VmDirectory {
  const vms = new Map<string, Vm>();
  const dir = staticDirectory(vms);
  return {
    ...dir,
    async refreshOne(id) {
      const vm = await platform.get(id);
      if (vm) vms.set(id, vm);
      else vms.delete(id);
      return vm;
    },
  };
}

const fmt = (n: number, d = 1) => n.toFixed(d);

/** A full GC before each memory baseline, so that the last run's garbage is not counted as headroom. */
function collectGarbage() {
  v8.setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
}

// ---- the two benchmarks -----------------------------------------------------------------------

/** The least a node:http proxy can do (no routing, no header rules): a reference for our overhead. */
function naiveProxy(ip: string, port: number) {
  const agent = new Agent({ keepAlive: true });
  return createServer((req, res) => {
    const up = request({ host: ip, port, method: req.method, path: req.url, headers: req.headers, agent }, (ur) => {
      res.writeHead(ur.statusCode!, ur.headers);
      ur.pipe(res);
    });
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
}

/**
 * Traefik (when a binary is found) in front of the guest and of the sidecar, through its file
 * provider: `bench.<base>` → the guest directly (a running route's router), `side.<base>` → the
 * sidecar (the catch-all's target). Resolves with its entry point URL and a stop function.
 */
async function startTraefik(guestUrl: string, sidecarUrl: string): Promise<{ url: string; stop(): void } | undefined> {
  const bin = findTraefikBinary(testConfig());
  if (!bin) return undefined;
  const free = async () => {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const port = (srv.address() as AddressInfo).port;
    await new Promise((r) => srv.close(r));
    return port;
  };
  const [web, api] = [await free(), await free()];
  const dir = mkdtempSync(join(os.tmpdir(), "hatch-bench-traefik-"));
  const file = join(dir, "dynamic.yml");
  writeFileSync(
    file,
    stringify({
      http: {
        routers: {
          direct: { entryPoints: ["web"], rule: `Host(\`${HOST}\`)`, service: "direct" },
          side: { entryPoints: ["web"], rule: `Host(\`${SIDE_HOST}\`)`, service: "side" },
        },
        services: { direct: { loadBalancer: { servers: [{ url: guestUrl }] } }, side: { loadBalancer: { servers: [{ url: sidecarUrl }] } } },
      },
    }),
  );
  const child = spawn(bin, [
    `--entryPoints.web.address=127.0.0.1:${web}`,
    `--entryPoints.traefik.address=127.0.0.1:${api}`,
    "--api.insecure=true",
    `--providers.file.filename=${file}`,
    "--global.checkNewVersion=false",
    "--global.sendAnonymousUsage=false",
    "--log.level=ERROR",
  ], { stdio: "ignore" });
  const stop = () => {
    child.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await Promise.all(
      ["direct", "side"].map((r) => fetch(`http://127.0.0.1:${api}/api/http/routers/${r}@file`).then((x) => x.ok, () => false)),
    );
    if (ok.every(Boolean)) break;
    if (Date.now() > deadline) {
      stop();
      throw new Error("Traefik did not load the bench routes within 20 s");
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url: `http://127.0.0.1:${web}/`, stop };
}

interface HotRow extends Cannon {
  name: string;
  /** CPU time of this (the proxy's) process per request, in µs; undefined for the direct path. */
  cpuUs: number | undefined;
}

const sequential: { direct?: { p50: number; p99: number }; sidecar?: { p50: number; p99: number } } = {};

async function hotPath(): Promise<HotRow[]> {
  const guest = tsx(["--guest"]);
  const info = JSON.parse(await firstLine(guest)) as { id: string; ip: string; port: number };
  const database = await openDatabase({});
  await insertRoute(database, { id: "rt_bench", vmId: info.id, subdomain: "bench", targetPort: info.port, autoWake: true });
  await insertRoute(database, { id: "rt_side", vmId: info.id, subdomain: "side", targetPort: info.port, autoWake: true });
  const vms = new Map<string, Vm>([[info.id, { id: info.id, state: "running", guest_ip: info.ip }]]);
  const platform = { kind: "simulator", get: async () => undefined, list: async () => [], wake: async () => Promise.reject(new Error("unused")), sleep: async () => Promise.reject(new Error("unused")) } as VmPlatform;
  const proxy = createWakeProxy({ config: testConfig({ baseDomain: "hatch.local" }), database, platform, directory: staticDirectory(vms), log: silentLogger }, { embedded: false });
  const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
  const naive = naiveProxy(info.ip, info.port);
  await new Promise<void>((r) => naive.listen(0, "127.0.0.1", r));
  const naiveUrl = `http://127.0.0.1:${(naive.address() as AddressInfo).port}/`;
  const traefik = await startTraefik(`http://${info.ip}:${info.port}`, server.url);
  if (!traefik) console.log("(no Traefik binary: the Traefik rows are skipped; `bash scripts/traefik.sh` builds one)");
  const measure = async (name: string, url: string, inProcess: boolean, host = HOST): Promise<HotRow> => {
    const cpu0 = process.cpuUsage();
    const r = await cannon(url, host);
    const cpu = process.cpuUsage(cpu0);
    return { name, ...r, cpuUs: inProcess ? (cpu.user + cpu.system) / Math.max(1, r.total) : undefined };
  };
  try {
    const guestUrl = `http://${info.ip}:${info.port}/`;
    // Warm-up (JIT, keep-alive pools, route cache): the sidecar's first seconds under load cost
    // visibly more CPU per request than its steady state, so both proxies get a full run first.
    await cannon(server.url + "/", HOST).catch(() => undefined);
    await cannon(naiveUrl, HOST).catch(() => undefined);
    const rows: HotRow[] = [];
    // Interleaved twice: the machine is shared, so one slow moment must not decide a ratio.
    for (let round = 0; round < 2; round++) {
      rows.push(await measure("client → guest (direct)", guestUrl, false));
      rows.push(await measure("client → sidecar → guest", server.url + "/", true));
      rows.push(await measure("client → naive node proxy → guest", naiveUrl, true));
      if (traefik) {
        rows.push(await measure("client → Traefik → guest", traefik.url, false));
        rows.push(await measure("client → Traefik → sidecar → guest", traefik.url, true, SIDE_HOST));
      }
    }
    // One request at a time: the hop's own latency, without queueing behind 31 other connections.
    const seq = async (url: string) => JSON.parse(await firstLine(tsx(["--seq-client", url, HOST, "2000"]))) as { p50: number; p99: number };
    sequential.direct = await seq(guestUrl);
    sequential.sidecar = await seq(server.url + "/");
    return rows;
  } finally {
    traefik?.stop();
    await proxy.close();
    await server.close();
    naive.close();
    naive.closeAllConnections();
    await database.close();
    await stopChild(guest);
  }
}

async function coldPath(runs: { n: number; bodyBytes: number }[]) {
  // The VMs live in their own process (as real VMs would): their restore timers and the guest's
  // hashing of 64 MB must not run on the sidecar's event loop.
  const simChild = tsx(["--sim"]);
  const simUrl = (JSON.parse(await firstLine(simChild)) as { url: string }).url;
  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(simUrl + path, { method, headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
    return (await res.json()) as Vm & { wake_count: number };
  };
  const platform = createHatchClient({ baseUrl: simUrl, timeoutMs: 5000 });
  const database = await openDatabase({});
  const directory = liveDirectory(platform);
  const config = testConfig({ baseDomain: "hatch.local", wakePageAfterMs: 0, wakeMaxWaiters: 1000 });
  const proxy = createWakeProxy({ config, database, platform, directory, log: silentLogger }, { embedded: false });
  const server = await startWakeServer(proxy, { host: "127.0.0.1", port: 0 });
  const rows = [];
  const wakeSeconds = async () => {
    const m = await proxy.registry.getSingleMetric("hatch_wake_duration_seconds")!.get();
    return m.values.filter((v) => (v as { metricName?: string }).metricName === "hatch_wake_duration_seconds_sum").reduce((a, v) => a + v.value, 0);
  };
  const held = () => {
    const m = process.memoryUsage();
    return m.heapUsed + m.arrayBuffers;
  };
  try {
    for (const [i, { n, bodyBytes }] of runs.entries()) {
      const vm = await api("POST", "/vms", { restore_ms: RESTORE_MS });
      await insertRoute(database, { id: `rt_cold${i}`, vmId: vm.id, subdomain: `cold${i}`, targetPort: 8080, autoWake: true });
      await api("POST", `/vms/${vm.id}/snapshot`);
      const wakeBefore = await wakeSeconds();
      collectGarbage();
      const baseRss = process.memoryUsage.rss();
      const baseHeld = held();
      let peakRss = baseRss;
      let peakHeld = baseHeld;
      const sampler = setInterval(() => {
        peakRss = Math.max(peakRss, process.memoryUsage.rss());
        peakHeld = Math.max(peakHeld, held());
      }, 5);
      const client = tsx(["--cold-client", server.url + "/", `cold${i}.hatch.local`, String(n), String(bodyBytes)]);
      const result = JSON.parse(await firstLine(client)) as { first: number; last: number; allSent: number; errors: number; samples: string[] };
      clearInterval(sampler);
      rows.push({
        n,
        bodyBytes,
        restores: (await api("GET", `/vms/${vm.id}`)).wake_count,
        errors: result.errors,
        firstMinusRestore: result.first - RESTORE_MS,
        lastMinusRestore: result.last - RESTORE_MS,
        allSent: result.allSent,
        peakRssMiB: peakRss / 2 ** 20,
        rssGrowthMiB: (peakRss - baseRss) / 2 ** 20,
        heldGrowthMiB: (peakHeld - baseHeld) / 2 ** 20,
        samples: result.samples,
        wakeMs: ((await wakeSeconds()) - wakeBefore) * 1000,
      });
    }
  } finally {
    await proxy.close();
    await server.close();
    await database.close();
    await stopChild(simChild);
  }
  return rows;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function main() {
  await assertBenchNetwork();
  const network = benchNetwork();
  console.log(
    `wake sidecar benchmark (node ${process.version}, ${SECONDS}s per hot-path run, ${CONNECTIONS} connections, loadavg ${os.loadavg()[0]!.toFixed(1)} on ${os.cpus().length} cores; ` +
      `VMs on the ${network === "bridge" ? "bridge network (a network namespace and veth each, on a Linux bridge)" : "loopback network"})`,
  );
  const parts = (process.env.BENCH_PARTS ?? "hot,cold").split(",");
  const hot = parts.includes("hot") ? await hotPath() : [];
  if (hot.length) printHot(hot);
  const cold = parts.includes("cold")
    ? await coldPath([
        { n: 1, bodyBytes: BODY_BYTES },
        { n: 100, bodyBytes: BODY_BYTES },
        { n: 1000, bodyBytes: BODY_BYTES },
        { n: 1000, bodyBytes: 0 },
      ])
    : [];
  if (cold.length) printCold(cold);
  writeSummary({ hot: hot.length ? hotSummary(hot) : undefined, sequential, cold: cold.map(({ samples: _, ...r }) => r) });
  const bad = cold.filter((r) => r.restores !== 1 || r.errors !== 0);
  if (bad.length || hot.some((r) => r.errors)) {
    console.log("\nFAILED: a cold run needed more than one restore or had errors, or the hot path had errors");
    process.exitCode = 1;
  }
}

/** Medians of the interleaved runs, per path. */
function hotSummary(hot: HotRow[]) {
  const pick = (name: string, f: (r: HotRow) => number) => median(hot.filter((r) => r.name.startsWith(name)).map(f));
  const direct = { rps: pick("client → guest", (r) => r.rps), p50: pick("client → guest", (r) => r.p50) };
  const side = { rps: pick("client → sidecar", (r) => r.rps), p50: pick("client → sidecar", (r) => r.p50), cpu: pick("client → sidecar", (r) => r.cpuUs!) };
  const naive = { rps: pick("client → naive", (r) => r.rps), cpu: pick("client → naive", (r) => r.cpuUs!) };
  const withTraefik = hot.some((r) => r.name.startsWith("client → Traefik → guest"));
  const tDirect = withTraefik ? { rps: pick("client → Traefik → guest", (r) => r.rps), p50: pick("client → Traefik → guest", (r) => r.p50) } : undefined;
  const tSide = withTraefik ? { rps: pick("client → Traefik → sidecar", (r) => r.rps), p50: pick("client → Traefik → sidecar", (r) => r.p50) } : undefined;
  return { direct, side, naive, tDirect, tSide };
}

function printHot(hot: HotRow[]) {
  console.log("\nHot path (autocannon in its own process, keep-alive, GET / → guest echo in its own process)");
  console.log("path                                 req/s   p50 ms  p99 ms  errors  proxy CPU µs/req");
  for (const r of hot) {
    console.log(
      `${r.name.padEnd(34)} ${fmt(r.rps, 0).padStart(8)}  ${fmt(r.p50).padStart(6)}  ${fmt(r.p99).padStart(6)}  ${String(r.errors).padStart(6)}  ${r.cpuUs === undefined ? "" : fmt(r.cpuUs, 0).padStart(8)}`,
    );
  }
  const { direct, side, naive, tDirect, tSide } = hotSummary(hot);
  console.log(
    `ratios (median of runs): sidecar/direct throughput ${fmt((side.rps / direct.rps) * 100)}%, p50 +${fmt(side.p50 - direct.p50, 2)} ms; ` +
      `sidecar/naive proxy throughput ${fmt((side.rps / naive.rps) * 100)}%, CPU per request ${fmt(side.cpu / naive.cpu, 2)}×`,
  );
  if (tDirect && tSide) {
    console.log(
      `with Traefik: Traefik→guest ${fmt((tDirect.rps / direct.rps) * 100)}% of direct; Traefik→sidecar→guest ${fmt((tSide.rps / tDirect.rps) * 100)}% of Traefik→guest, p50 +${fmt(tSide.p50 - tDirect.p50, 2)} ms`,
    );
  }
  const { direct: d1, sidecar: s1 } = sequential;
  if (d1 && s1) {
    console.log(
      `one request at a time (2000 GETs, kept-alive): direct p50 ${fmt(d1.p50 / 1000, 3)} ms p99 ${fmt(d1.p99 / 1000, 3)} ms; ` +
        `sidecar p50 ${fmt(s1.p50 / 1000, 3)} ms p99 ${fmt(s1.p99 / 1000, 3)} ms; added p50 ${fmt((s1.p50 - d1.p50) / 1000, 3)} ms`,
    );
  }
}

function printCold(cold: Awaited<ReturnType<typeof coldPath>>) {
  console.log(`\nCold path (one sleeping VM per run, restore ${RESTORE_MS} ms; POSTs with distinct ${BODY_BYTES / 1024} KiB bodies, or GETs; client in its own process)`);
  console.log("N/body      restores  errors  wake ms  all sent ms  first−restore ms  last−restore ms  peak RSS MiB (+growth)  peak heap+buffers growth MiB");
  for (const r of cold) {
    console.log(
      `${`${r.n}/${r.bodyBytes ? `${r.bodyBytes / 1024}K` : "GET"}`.padEnd(11)} ${String(r.restores).padStart(8)}  ${String(r.errors).padStart(6)}  ${fmt(r.wakeMs, 0).padStart(7)}  ${fmt(r.allSent, 0).padStart(11)}  ${fmt(r.firstMinusRestore).padStart(16)}  ${fmt(r.lastMinusRestore).padStart(15)}  ${fmt(r.peakRssMiB, 0).padStart(7)} (+${fmt(r.rssGrowthMiB, 0)})  ${fmt(r.heldGrowthMiB, 0).padStart(10)}`,
    );
    if (r.samples.length) console.log(`       errors e.g.: ${r.samples.join(" | ")}`);
  }
  console.log("(wake ms: the sidecar's own wake duration, restore + readiness; all sent: when the client had finished writing every request; first/last: responses, from the burst's start in the client)");
}

const mode = process.argv[2];
if (mode === "--guest") await guestMode();
else if (mode === "--sim") await simMode();
else if (mode === "--seq-client") await seqClientMode(process.argv[3]!, process.argv[4]!, Number(process.argv[5]));
else if (mode === "--cold-client") await coldClientMode(process.argv[3]!, process.argv[4]!, Number(process.argv[5]), Number(process.argv[6]));
else {
  // The sidecar runs in this process, as the product's service processes run (main.ts).
  capYoungGeneration();
  await main().catch((err: Error) => {
    console.error(err.message.startsWith("BENCH_SIM_NETWORK") ? err.message : err);
    process.exit(1);
  });
}
