/**
 * Create-route benchmark: `npx tsx bench/api.ts`.
 *
 * Throughput and latency of POST /vms/:vm_id/routes (unique subdomain per request) for the real
 * route API on Postgres and on PGlite, against baselines measured in the same run: a bare Hono
 * handler doing the same single INSERT (postgres.js on Postgres; the same PGlite handle on PGlite),
 * with no validation, auth, logging or metrics. Then a fixed-rate run (200 req/s) for p99.
 * Goals (issue 2): ours/baseline throughput >= 0.70 on Postgres, p99 < 20 ms at 200 req/s.
 *
 * Each server runs in a child process so the load generator does not share its event loop.
 * Postgres: a fresh database on BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres),
 * dropped at the end; without Postgres only the PGlite rows are measured.
 * Options (env): BENCH_DURATION (seconds per throughput run, default 5), BENCH_CONNECTIONS (default 10),
 * BENCH_RATE (fixed rate, default 200), BENCH_ROUNDS (interleaved throughput rounds, default 2).
 */
import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpus, loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import postgres from "postgres";
import { sql } from "drizzle-orm";
import { createApp } from "../src/api/app.ts";
import { createStaticKeyAuth } from "../src/api/auth.ts";
import { testConfig } from "../src/config.ts";
import { openDatabase, ROUTES_CHANNEL, type Database } from "../src/db/client.ts";
import { silentLogger } from "../src/log.ts";
import { capYoungGeneration } from "../src/young-generation.ts";
import type { Vm, VmPlatform } from "../src/vms/platform.ts";
import { staticDirectory } from "./directory.ts";

/** The part of autocannon's API used here (it ships no type declarations). */
interface AutocannonResult {
  requests: { average: number };
  latency: { p50: number; p99: number };
  "2xx": number;
  non2xx: number;
  errors: number;
  timeouts: number;
}
const autocannon = createRequire(import.meta.url)("autocannon") as (opts: Record<string, unknown>) => Promise<AutocannonResult>;

const KEY = "bench-key";
const VM_ID = "vm_bench";
type Kind = "ours-postgres" | "ours-pglite" | "baseline-postgres" | "baseline-postgres-notify" | "baseline-pglite";

// ---------------------------------------------------------------- server side (child process)

/** A platform where the one benchmark VM always runs: the API's VM check costs no network hop. */
function benchPlatform(): VmPlatform {
  const vm: Vm = { id: VM_ID, state: "running", guest_ip: "127.0.0.1" };
  return {
    kind: "simulator",
    get: async (id) => (id === VM_ID ? { ...vm } : undefined),
    list: async () => [{ ...vm }],
    wake: async () => ({ ...vm }),
    sleep: async () => ({ ...vm }),
  };
}

/** The bare handler: parse the body, one INSERT … RETURNING, answer 201 with the row. */
function baselineApp(insert: (id: string, vmId: string, subdomain: string, port: number) => Promise<unknown>): Hono {
  const app = new Hono();
  app.post("/vms/:vm_id/routes", async (c) => {
    const body = (await c.req.json()) as { subdomain: string; target_port: number };
    const row = await insert(`rt_${randomBytes(8).toString("hex")}`, c.req.param("vm_id"), body.subdomain, body.target_port);
    return c.json(row, 201);
  });
  let reported = false;
  app.onError((err, c) => {
    // Failures count as non-2xx in the table; say once why.
    if (!reported) console.error(`baseline error: ${(err as Error).message}`);
    reported = true;
    return c.json({ error: "internal error" }, 500);
  });
  return app;
}

async function runServer(kind: Kind, url: string | undefined): Promise<void> {
  // Ours runs as the product's service processes do (main.ts).
  if (kind.startsWith("ours")) capYoungGeneration();
  let app: { fetch: (req: Request) => Response | Promise<Response> };
  let database: Database | undefined;
  let client: postgres.Sql | undefined;
  if (kind === "baseline-postgres" || kind === "baseline-postgres-notify") {
    client = postgres(url!, { max: 10, onnotice: () => {} });
    const c = client;
    app = baselineApp(async (id, vmId, subdomain, port) => {
      const [row] = await c`insert into routes (id, vm_id, subdomain, target_port) values (${id}, ${vmId}, ${subdomain}, ${port}) returning *`;
      // Diagnostic variant: the NOTIFY the API sends after each write, as its own statement.
      if (kind === "baseline-postgres-notify") await c.notify(ROUTES_CHANNEL, vmId);
      return row;
    });
  } else if (kind === "baseline-pglite") {
    database = await openDatabase({});
    const d = database;
    app = baselineApp(async (id, vmId, subdomain, port) => {
      const res = (await d.db.execute(sql`insert into routes (id, vm_id, subdomain, target_port) values (${id}, ${vmId}, ${subdomain}, ${port}) returning *`)) as unknown;
      return Array.isArray(res) ? res[0] : (res as { rows: unknown[] }).rows[0];
    });
  } else {
    database = await openDatabase(kind === "ours-postgres" ? { url: url! } : {});
    app = createApp({
      config: testConfig(),
      database,
      platform: benchPlatform(),
      directory: staticDirectory(),
      auth: createStaticKeyAuth([KEY]),
      log: silentLogger,
    });
  }
  const server = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, (info) => process.send!({ port: info.port }));
  process.on("message", async (msg) => {
    if (msg === "cpu") {
      const u = process.cpuUsage();
      process.send!({ cpu: u.user + u.system });
      return;
    }
    if (msg !== "stop") return;
    server.close();
    await client?.end({ timeout: 2 });
    await database?.close();
    process.exit(0);
  });
}

// ---------------------------------------------------------------- load side (parent)

interface Started {
  port: number;
  child: ChildProcess;
}

function startServer(kind: Kind, url: string | undefined): Promise<Started> {
  const child = fork(fileURLToPath(import.meta.url), ["--serve", kind, url ?? ""], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  return new Promise((resolve, reject) => {
    child.once("message", (m) => resolve({ port: (m as { port: number }).port, child }));
    child.once("exit", (code) => reject(new Error(`${kind} server exited with code ${code}`)));
  });
}

function stopServer(s: Started): Promise<void> {
  return new Promise((resolve) => {
    const kill = setTimeout(() => s.child.kill("SIGKILL"), 5000);
    s.child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    s.child.send("stop");
  });
}

interface Measured {
  rps: number;
  /** Server CPU time (user + system) per answered request, in microseconds. */
  cpuPerReq: number;
  p50: number;
  p99: number;
  ok: number;
  non2xx: number;
  errors: number;
}

let runCounter = 0;

/** The server process's CPU time so far (µs): unlike req/s, CPU per request hardly depends on what else the machine runs. */
function serverCpu(s: Started): Promise<number> {
  return new Promise((resolve) => {
    const onMessage = (m: unknown) => {
      if (typeof (m as { cpu?: unknown })?.cpu !== "number") return;
      s.child.off("message", onMessage);
      resolve((m as { cpu: number }).cpu);
    };
    s.child.on("message", onMessage);
    s.child.send("cpu");
  });
}

/** One autocannon run of creates, each with a fresh subdomain. */
async function load(server: Started, opts: { seconds: number; connections: number; rate?: number }): Promise<Measured> {
  const port = server.port;
  const cpuBefore = await serverCpu(server);
  const tag = `b${process.pid.toString(36)}${(runCounter++).toString(36)}`;
  let n = 0;
  const result = await autocannon({
    url: `http://127.0.0.1:${port}`,
    connections: opts.connections,
    duration: opts.seconds,
    ...(opts.rate && { overallRate: opts.rate }),
    requests: [
      {
        method: "POST",
        path: `/vms/${VM_ID}/routes`,
        headers: { "content-type": "application/json", authorization: `Bearer ${KEY}` },
        setupRequest: (req: Record<string, unknown>) => ({ ...req, body: JSON.stringify({ subdomain: `${tag}-${(n++).toString(36)}`, target_port: 8080 }) }),
      },
    ],
  });
  const cpu = (await serverCpu(server)) - cpuBefore;
  return {
    rps: result.requests.average,
    cpuPerReq: cpu / Math.max(1, result["2xx"] + result.non2xx),
    p50: result.latency.p50,
    p99: result.latency.p99,
    ok: result["2xx"],
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
  };
}

interface Planned {
  name: string;
  kind: Kind;
  /** The kind this one is compared with; "" for a baseline. */
  baseline: Kind | "";
}

interface Result {
  throughput: Measured;
  fixed: Measured;
}

/**
 * All servers run side by side; throughput runs alternate between them for several rounds (order
 * reversed every other round), so load from elsewhere on the machine hits baseline and ours alike.
 */
async function measureAll(plan: Planned[], pgUrl: string | undefined, o: { seconds: number; connections: number; rate: number; rounds: number }) {
  const servers = new Map<Kind, Started>();
  try {
    for (const p of plan) {
      servers.set(p.kind, await startServer(p.kind, p.kind.includes("postgres") ? pgUrl : undefined));
      await load(servers.get(p.kind)!, { seconds: 1, connections: o.connections }); // warm-up: JIT, pools
    }
    const runs = new Map<Kind, Measured[]>(plan.map((p) => [p.kind, []]));
    for (let round = 0; round < o.rounds; round++) {
      const order = round % 2 ? [...plan].reverse() : plan;
      for (const p of order) {
        console.error(`  round ${round + 1}/${o.rounds}: ${p.name} …`);
        runs.get(p.kind)!.push(await load(servers.get(p.kind)!, { seconds: o.seconds, connections: o.connections }));
      }
    }
    const results = new Map<Kind, Result>();
    for (const p of plan) {
      console.error(`  fixed rate ${o.rate} req/s: ${p.name} …`);
      const fixed = await load(servers.get(p.kind)!, { seconds: o.seconds, connections: o.connections, rate: o.rate });
      const r = runs.get(p.kind)!;
      const mean = (f: (m: Measured) => number) => r.reduce((a, m) => a + f(m), 0) / r.length;
      results.set(p.kind, {
        throughput: {
          rps: mean((m) => m.rps),
          cpuPerReq: mean((m) => m.cpuPerReq),
          p50: mean((m) => m.p50),
          p99: Math.max(...r.map((m) => m.p99)),
          ok: mean((m) => m.ok),
          non2xx: r.reduce((a, m) => a + m.non2xx, 0),
          errors: r.reduce((a, m) => a + m.errors, 0),
        },
        fixed,
      });
    }
    return results;
  } finally {
    await Promise.all([...servers.values()].map(stopServer));
  }
}

const fmt = (n: number, digits = 0) => n.toFixed(digits);

async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_DURATION ?? 5);
  const connections = Number(process.env.BENCH_CONNECTIONS ?? 10);
  const rate = Number(process.env.BENCH_RATE ?? 200);
  const adminUrl = process.env.BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

  let pgUrl: string | undefined;
  const dbName = `hatch_bench_${process.pid}_${randomBytes(3).toString("hex")}`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {}, connect_timeout: 3 });
  try {
    await admin.unsafe(`create database ${dbName}`);
    const u = new URL(adminUrl);
    u.pathname = `/${dbName}`;
    pgUrl = u.toString();
    // Apply the migrations once, so the baseline finds the table.
    await (await openDatabase({ url: pgUrl })).close();
  } catch (err) {
    console.error(`Postgres not available at ${adminUrl} (${(err as Error).message}): measuring PGlite only`);
  }

  const rounds = Number(process.env.BENCH_ROUNDS ?? 2);
  const loadAtStart = loadavg()[0]!.toFixed(1);
  const plan: Planned[] = [];
  if (pgUrl) {
    plan.push(
      { name: "baseline: Hono + postgres.js INSERT", kind: "baseline-postgres", baseline: "" },
      { name: "(diagnostic) baseline + NOTIFY", kind: "baseline-postgres-notify", baseline: "baseline-postgres" },
      { name: "hatch-proxy API on Postgres", kind: "ours-postgres", baseline: "baseline-postgres" },
    );
  }
  plan.push(
    { name: "baseline: Hono + PGlite INSERT", kind: "baseline-pglite", baseline: "" },
    { name: "hatch-proxy API on PGlite", kind: "ours-pglite", baseline: "baseline-pglite" },
  );
  let results: Map<Kind, Result>;
  try {
    console.error(`create-route benchmark: ${rounds} rounds of ${seconds}s per target, ${connections} connections; then ${seconds}s at ${rate} req/s`);
    results = await measureAll(plan, pgUrl, { seconds, connections, rate, rounds });
  } finally {
    if (pgUrl) await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
    await admin.end({ timeout: 2 });
  }
  const rows = plan.map((p) => ({ ...p, m: results.get(p.kind)! }));

  const kindOf = (name: string) => rows.find((r) => r.name === name);
  const table = [
    ["target", "req/s", "p50 ms", "p99 ms", "ratio", "CPU µs/req", "CPU ratio", `p50@${rate}`, `p99@${rate}`, "non-2xx", "errors"],
    ...rows.map((r) => {
      const base = rows.find((b) => b.kind === r.baseline);
      const ratio = r.baseline && base ? fmt(r.m.throughput.rps / base.m.throughput.rps, 2) : "1.00 (baseline)";
      return [
        r.name,
        fmt(r.m.throughput.rps),
        fmt(r.m.throughput.p50, 1),
        fmt(r.m.throughput.p99, 1),
        ratio,
        fmt(r.m.throughput.cpuPerReq),
        r.baseline && base ? fmt(base.m.throughput.cpuPerReq / r.m.throughput.cpuPerReq, 2) : "1.00",
        fmt(r.m.fixed.p50, 1),
        fmt(r.m.fixed.p99, 1),
        String(r.m.throughput.non2xx + r.m.fixed.non2xx),
        String(r.m.throughput.errors + r.m.fixed.errors),
      ];
    }),
  ];
  const load1 = loadavg()[0]!.toFixed(1);
  console.log(`\nmachine: ${cpus().length} cores, 1-min load average ${loadAtStart} at start, ${load1} at end (others' work skews absolute numbers; ratios come from interleaved runs)`);
  console.log(`req/s and p50: mean of ${rounds} rounds; p99: the worst round; p50/p99@${rate}: one fixed-rate run`);
  console.log("ratio: ours/baseline req/s; CPU ratio: baseline/ours server CPU per request (the throughput ratio the CPU cost allows on an idle machine)");
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  console.log("");
  for (const row of table) console.log(row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  "));
  console.log("");
  const ours = kindOf("hatch-proxy API on Postgres");
  const base = kindOf("baseline: Hono + postgres.js INSERT");
  if (ours && base) {
    const ratio = ours.m.throughput.rps / base.m.throughput.rps;
    console.log(`goal: throughput ratio on Postgres >= 0.70: ${fmt(ratio, 2)} ${ratio >= 0.7 ? "MET" : "NOT MET"} (CPU-per-request ratio ${fmt(base.m.throughput.cpuPerReq / ours.m.throughput.cpuPerReq, 2)})`);
    console.log(`goal: p99 < 20 ms at ${rate} req/s on Postgres: ${fmt(ours.m.fixed.p99, 1)} ms ${ours.m.fixed.p99 < 20 ? "MET" : "NOT MET"}`);
  }
  const lite = kindOf("hatch-proxy API on PGlite");
  if (lite) console.log(`PGlite: p99 at ${rate} req/s: ${fmt(lite.m.fixed.p99, 1)} ms ${lite.m.fixed.p99 < 20 ? "(< 20 ms)" : "(>= 20 ms)"}`);
  const bad = rows.filter((r) => r.m.throughput.non2xx + r.m.fixed.non2xx + r.m.throughput.errors + r.m.fixed.errors > 0);
  if (bad.length) console.log(`warning: non-2xx answers or errors in: ${bad.map((r) => r.name).join(", ")} (numbers above include them)`);
}

if (process.argv[2] === "--serve") {
  await runServer(process.argv[3] as Kind, process.argv[4] || undefined);
} else {
  await main();
}
