/**
 * Traefik provider benchmark: `npx tsx bench/traefik.ts` (add `--no-traefik` to skip propagation).
 * 1. Build: 1k / 10k / 100k routes (10% running): pure build, rebuild after one route insert
 *    (NOTIFY → per-VM read → build), rebuild after one VM state change, body size, heap.
 * 2. Serving: the cached endpoint vs a bare node:http server sending a Buffer of the same size,
 *    both measured with autocannon in a separate process, as a ratio.
 * 3. Propagation through a real Traefik (when scripts/traefik.sh --find has one): insert of a
 *    route for a running VM → its router is live in Traefik's API, at pollInterval 1s.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { serve } from "@hono/node-server";
import { stringify as toYaml } from "yaml";
import { testConfig } from "../src/config.ts";
import { openDatabase, type Database } from "../src/db/client.ts";
import { insertRoute, listAllRoutes } from "../src/db/routes.repo.ts";
import { silentLogger } from "../src/log.ts";
import { buildDynamicConfig } from "../src/traefik/config-builder.ts";
import { createConfigService, type ConfigService } from "../src/traefik/config-service.ts";
import { etagOf, traefikSettings } from "../src/traefik/config-snapshot.ts";
import { traefikEndpoint } from "../src/traefik/endpoint.ts";
import { routesFingerprint } from "../src/traefik/routes-fingerprint.ts";
import { buildStaticConfig } from "../src/traefik/static-config.ts";
import type { Vm, VmDirectory, VmState } from "../src/vms/platform.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const SERVE_SECONDS = Number(process.env.BENCH_SERVE_SECONDS ?? 3);
const SERVE_ROUNDS = Number(process.env.BENCH_SERVE_ROUNDS ?? 3);

/** A directory over a Map (the bench controls states; the real one polls the platform). */
function mapDirectory(vms: Map<string, Vm>) {
  const listeners = new Set<() => void>();
  let version = 0;
  const dir: VmDirectory & { set(id: string, state: VmState): void } = {
    peek: (id) => vms.get(id),
    all: () => vms,
    refreshOne: async (id) => vms.get(id),
    refreshAll: async () => {},
    record: (vm) => {
      vms.set(vm.id, vm);
      version++;
      for (const l of listeners) l();
    },
    onChange: (l) => (listeners.add(l), () => listeners.delete(l)),
    get version() {
      return version;
    },
    ready: true,
    start() {},
    stop() {},
    set(id, state) {
      dir.record({ ...vms.get(id)!, state });
    },
  };
  return dir;
}

const guestIp = (i: number) => `127.1.${(i >> 8) & 255}.${i & 255}`;

/** N routes, each on its own VM; every `runEvery`-th VM running. Bulk-inserted in SQL. */
async function seed(database: Database, n: number, runEvery: number, prefix = "b") {
  await database.db.execute(
    sql.raw(
      `insert into routes (id, vm_id, subdomain, target_port) select 'rt_${prefix}' || g, 'vm_${prefix}' || g, 's${prefix}' || g, 8080 from generate_series(0, ${n - 1}) g`,
    ),
  );
  const vms = new Map<string, Vm>();
  for (let i = 0; i < n; i++) {
    const id = `vm_${prefix}${i}`;
    vms.set(id, { id, state: i % runEvery === 0 ? "running" : "snapshotted", guest_ip: guestIp(i) });
  }
  return vms;
}

function median(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function waitFor(cond: () => boolean, timeoutMs = 10_000) {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error("timed out");
    await new Promise((r) => setImmediate(r));
  }
}

const gc = (globalThis as { gc?: () => void }).gc;
const heapMiB = () => {
  gc?.();
  return process.memoryUsage().heapUsed / 2 ** 20;
};

interface BuildRow {
  routes: number;
  running: number;
  pureMs: number;
  insertMs: number;
  stateMs: number;
  stateCpuMs: number;
  fullReadMs: number;
  bodyKiB: number;
  heapMiB: number;
  yamlMs: number;
  checkMs: number;
  readAllMs: number;
}

async function benchBuild(n: number): Promise<{ row: BuildRow; database: Database; service: ConfigService }> {
  const database = await openDatabase({});
  const heap0 = heapMiB();
  const vms = await seed(database, n, 10);
  const directory = mapDirectory(vms);
  const config = testConfig({ wakeSecret: "bench-secret" });
  const settings = traefikSettings(config);

  const routes = [...vms.keys()].map((vmId, i) => ({ id: `rt_b${i}`, vmId, subdomain: `sb${i}`, targetPort: 8080 }));
  const pure: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    // What the service does per rebuild (minus the running-VM prefilter): build, serialize, hash.
    const json = JSON.stringify(buildDynamicConfig(routes, vms, settings));
    etagOf(json);
    pure.push(performance.now() - t0);
  }

  const service = createConfigService({ database, directory, config, log: silentLogger, resyncMs: 3_600_000 });
  let t0 = performance.now();
  await service.start();
  const fullReadMs = performance.now() - t0;
  const heap = heapMiB() - heap0;

  const inserts: number[] = [];
  for (let i = 0; i < 5; i++) {
    const before = service.current()!.etag;
    t0 = performance.now();
    await insertRoute(database, { id: `rt_new${i}`, vmId: "vm_b0", subdomain: `new${i}`, targetPort: 9000 + i });
    await waitFor(() => service.current()!.etag !== before);
    inserts.push(performance.now() - t0);
  }
  const states: number[] = [];
  const stateCpu: number[] = [];
  for (let i = 0; i < 7; i++) {
    const before = service.current()!.etag;
    const c0 = process.cpuUsage();
    t0 = performance.now();
    directory.set("vm_b1", i % 2 ? "snapshotted" : "running");
    await waitFor(() => service.current()!.etag !== before);
    states.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    stateCpu.push((c.user + c.system) / 1000);
  }
  t0 = performance.now();
  toYaml(JSON.parse(service.current()!.json), { lineWidth: 0 });
  const yamlMs = performance.now() - t0;
  // The periodic check (every 5 s) against what it replaces: re-reading every row.
  const checks: number[] = [];
  const reads: number[] = [];
  for (let i = 0; i < 3; i++) {
    t0 = performance.now();
    await routesFingerprint(database);
    checks.push(performance.now() - t0);
    t0 = performance.now();
    await listAllRoutes(database);
    reads.push(performance.now() - t0);
  }
  return {
    row: {
      routes: n,
      running: service.current()!.routers - 2,
      pureMs: median(pure),
      insertMs: median(inserts),
      stateMs: median(states),
      stateCpuMs: median(stateCpu),
      fullReadMs,
      bodyKiB: service.current()!.body.length / 1024,
      heapMiB: heap,
      yamlMs,
      checkMs: median(checks),
      readAllMs: median(reads),
    },
    database,
    service,
  };
}

/** Requests per second from autocannon run in its own process (so it does not share our event loop). */
function autocannon(url: string, seconds: number): Promise<{ rps: number; mbps: number; non2xx: number }> {
  const bin = join(root, "node_modules/autocannon/autocannon.js");
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [bin, "-c", "10", "-d", String(seconds), "--json", url], { maxBuffer: 64 << 20 }, (err, stdout) => {
      if (err) return reject(err);
      const r = JSON.parse(stdout);
      resolve({ rps: r.requests.average, mbps: r.throughput.average / 2 ** 20, non2xx: r.non2xx + r.errors });
    });
  });
}

function listen(server: Server): Promise<number> {
  return new Promise((r) => server.listen(0, "127.0.0.1", () => r((server.address() as AddressInfo).port)));
}

async function benchServe(service: ConfigService) {
  const app = traefikEndpoint(service, { config: testConfig(), log: silentLogger });
  const endpoint = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }) as Server;
  await new Promise((r) => endpoint.once("listening", r));
  const snap = service.current()!;
  const body = Buffer.from(snap.body);
  const baseline = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "application/json", etag: snap.etag, "content-length": body.length });
    res.end(body);
  });
  const basePort = await listen(baseline);
  try {
    // Interleaved rounds: the machine is shared, so each round's ratio compares two runs made back
    // to back, and the median of those ratios is reported (with the best req/s of each side).
    type Run = Awaited<ReturnType<typeof autocannon>>;
    const best = (a: Run | undefined, b: Run): Run => (a && a.rps >= b.rps ? a : b);
    let base: Run | undefined;
    let ours: Run | undefined;
    const ratios: number[] = [];
    // Warm-up (JIT) of both servers before anything is measured.
    await autocannon(`http://127.0.0.1:${basePort}/`, 1);
    await autocannon(`http://127.0.0.1:${(endpoint.address() as AddressInfo).port}/config`, 1);
    for (let round = 0; round < SERVE_ROUNDS; round++) {
      const b = await autocannon(`http://127.0.0.1:${basePort}/`, SERVE_SECONDS);
      const r = await autocannon(`http://127.0.0.1:${(endpoint.address() as AddressInfo).port}/config`, SERVE_SECONDS);
      if (r.non2xx) throw new Error(`endpoint answered ${r.non2xx} non-2xx`);
      base = best(base, b);
      ours = best(ours, r);
      ratios.push(r.rps / b.rps);
    }
    return { base: base!, ours: ours!, ratio: median(ratios), ratios };
  } finally {
    await new Promise((r) => baseline.close(r));
    await new Promise((r) => endpoint.close(r));
  }
}

function findTraefik(): string | undefined {
  try {
    return execFileSync("bash", [join(root, "scripts/traefik.sh"), "--find"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim() || undefined;
  } catch {
    return undefined;
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  const port = await listen(s);
  await new Promise((r) => s.close(r));
  return port;
}

async function benchPropagation(bin: string, running: number, samples: number) {
  const database = await openDatabase({});
  const vms = await seed(database, running, 1, "p");
  for (let i = 0; i < samples; i++) vms.set(`vm_new${i}`, { id: `vm_new${i}`, state: "running", guest_ip: "127.0.1.250" });
  const directory = mapDirectory(vms);
  const config = testConfig();
  const service = createConfigService({ database, directory, config, log: silentLogger, resyncMs: 3_600_000 });
  await service.start();
  const app = traefikEndpoint(service, { config, log: silentLogger });
  const endpoint = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }) as Server;
  await new Promise((r) => endpoint.once("listening", r));
  const dir = mkdtempSync(join(tmpdir(), "hatch-bench-traefik-"));
  const apiPort = await freePort();
  const proxyPort = await freePort();
  const staticConfig = buildStaticConfig(
    testConfig({ proxyAddr: { host: "127.0.0.1", port: proxyPort } }),
    { providerUrl: `http://127.0.0.1:${(endpoint.address() as AddressInfo).port}/config`, apiPort },
  ) as any;
  staticConfig.log = { level: "ERROR" };
  delete staticConfig.accessLog;
  writeFileSync(join(dir, "traefik.yml"), toYaml(staticConfig));
  const child: ChildProcess = spawn(bin, [`--configFile=${join(dir, "traefik.yml")}`], { stdio: "ignore" });
  const api = `http://127.0.0.1:${apiPort}/api/http/routers`;
  const live = async (id: string) => (await fetch(`${api}/${id}@http`).catch(() => undefined))?.status === 200;
  try {
    const t0 = performance.now();
    while (!(await live(`rt_p${running - 1}`))) {
      if (performance.now() - t0 > 60_000) throw new Error("Traefik never loaded the initial config");
      await new Promise((r) => setTimeout(r, 50));
    }
    const initialMs = performance.now() - t0;
    const times: number[] = [];
    for (let i = 0; i < samples; i++) {
      // Spread inserts over the poll cycle so the figures are not all at the same phase.
      await new Promise((r) => setTimeout(r, 137 * (i + 1)));
      const t1 = performance.now();
      await insertRoute(database, { id: `rt_new${i}`, vmId: `vm_new${i}`, subdomain: `new${i}`, targetPort: 8080 });
      while (!(await live(`rt_new${i}`))) {
        if (performance.now() - t1 > 30_000) throw new Error("route never became live");
        await new Promise((r) => setTimeout(r, 10));
      }
      times.push(performance.now() - t1);
    }
    return { running, initialMs, times, bodyKiB: service.current()!.body.length / 1024 };
  } finally {
    child.kill("SIGTERM");
    await new Promise((r) => (child.exitCode !== null ? r(null) : child.once("exit", r)));
    await service.stop();
    await new Promise((r) => endpoint.close(r));
    await database.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const f = (x: number, d = 1) => x.toFixed(d);
function table(head: string[], rows: (string | number)[][]) {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const w = head.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  for (const [k, r] of cells.entries()) {
    console.log(r.map((c, i) => c.padStart(w[i]!)).join("  "));
    if (k === 0) console.log(w.map((n) => "-".repeat(n)).join("  "));
  }
}

/** Runs the whole benchmark and prints the tables. */
export async function runTraefikBench(opts: { traefik?: boolean } = {}) {
  console.log(`# Traefik provider benchmark (node ${process.version}${gc ? "" : ", heap without --expose-gc is approximate"})\n`);
  const buildRows: BuildRow[] = [];
  const serveRows: (string | number)[][] = [];
  const sizes = (process.env.BENCH_ROUTES ?? "1000,10000,100000").split(",").map(Number);
  for (const n of sizes) {
    const { row, database, service } = await benchBuild(n);
    buildRows.push(row);
    const { base, ours, ratio, ratios } = await benchServe(service);
    serveRows.push([n, f(row.bodyKiB), f(base.rps, 0), f(ours.rps, 0), f(base.mbps), f(ours.mbps), ratios.map((r) => f(r, 2)).join(" "), f(ratio, 2)]);
    await service.stop();
    await database.close();
  }
  console.log("## Build (medians; goal: 100k routes rebuilt in <= 100 ms)");
  console.log("full build = buildDynamicConfig + JSON + hash over every route; the service rebuilds incrementally (only changed routes serialized).");
  table(
    ["routes", "running", "full build ms", "insert→new body ms", "state change→new body ms", "(cpu ms)", "initial read+build ms", "periodic check ms", "(all rows read ms)", "body KiB", "heap MiB", "yaml ms"],
    buildRows.map((r) => [r.routes, r.running, f(r.pureMs), f(r.insertMs), f(r.stateMs), f(r.stateCpuMs), f(r.fullReadMs, 0), f(r.checkMs), f(r.readAllMs, 0), f(r.bodyKiB), f(r.heapMiB), f(r.yamlMs, 0)]),
  );
  console.log(`\n## Serving the cached body (autocannon -c 10 -d ${SERVE_SECONDS} in its own process, ${SERVE_ROUNDS} interleaved rounds, loopback; best req/s of each side; ratio = median of per-round ratios; goal: ratio >= 0.80)`);
  table(["routes", "body KiB", "baseline req/s", "endpoint req/s", "baseline MiB/s", "endpoint MiB/s", "round ratios", "ratio"], serveRows);

  const bin = opts.traefik === false ? undefined : findTraefik();
  if (!bin) {
    console.log("\n## Propagation: skipped (no Traefik binary; run scripts/traefik.sh)");
    return;
  }
  console.log(`\n## Propagation through Traefik (${bin}; pollInterval 1s, providersThrottleDuration 500ms)`);
  const rows: (string | number)[][] = [];
  for (const running of [100, 1_000, 5_000]) {
    const r = await benchPropagation(bin, running, 4);
    rows.push([running, f(r.bodyKiB), f(r.initialMs, 0), r.times.map((t) => f(t, 0)).join(" "), f(median(r.times), 0), f(Math.max(...r.times), 0)]);
  }
  table(["running routes", "body KiB", "initial load ms", "insert→live ms (samples)", "median", "max"], rows);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await runTraefikBench({ traefik: !process.argv.includes("--no-traefik") });
}
