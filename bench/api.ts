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
 * BENCH_RATE (fixed rate, default 200).
 */
import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import postgres from "postgres";
import { sql } from "drizzle-orm";
import { createApp } from "../src/api/app.ts";
import { createStaticKeyAuth } from "../src/api/auth.ts";
import { testConfig } from "../src/config.ts";
import { openDatabase, type Database } from "../src/db/client.ts";
import { silentLogger } from "../src/log.ts";
import type { Vm, VmDirectory, VmPlatform } from "../src/vms/platform.ts";

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
type Kind = "ours-postgres" | "ours-pglite" | "baseline-postgres" | "baseline-pglite";

// ---------------------------------------------------------------- server side (child process)

/** A platform where the one benchmark VM always runs: the API's VM check costs no network hop. */
function benchPlatform(): VmPlatform {
  const vm: Vm = { id: VM_ID, state: "running", guest_ip: "127.0.0.1" };
  return {
    kind: "simulator",
    get: async (id) => (id === VM_ID ? { ...vm } : undefined),
    list: async () => [{ ...vm }],
    wake: async () => ({ ...vm }),
  };
}

/** A directory that only remembers what the API records (no polling). */
function benchDirectory(): VmDirectory {
  const vms = new Map<string, Vm>();
  return {
    peek: (id) => vms.get(id),
    all: () => vms,
    refreshOne: async (id) => vms.get(id),
    refreshAll: async () => {},
    record: (v) => void vms.set(v.id, v),
    onChange: () => () => {},
    version: 0,
    ready: true,
    start: () => {},
    stop: () => {},
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
  return app;
}

async function runServer(kind: Kind, url: string | undefined): Promise<void> {
  let app: { fetch: (req: Request) => Response | Promise<Response> };
  let database: Database | undefined;
  let client: postgres.Sql | undefined;
  if (kind === "baseline-postgres") {
    client = postgres(url!, { max: 10, onnotice: () => {} });
    const c = client;
    app = baselineApp(async (id, vmId, subdomain, port) => {
      const [row] = await c`insert into routes (id, vm_id, subdomain, target_port) values (${id}, ${vmId}, ${subdomain}, ${port}) returning *`;
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
      directory: benchDirectory(),
      auth: createStaticKeyAuth([KEY]),
      log: silentLogger,
    });
  }
  const server = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, (info) => process.send!({ port: info.port }));
  process.on("message", async (msg) => {
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
  p50: number;
  p99: number;
  ok: number;
  non2xx: number;
  errors: number;
}

let runCounter = 0;

/** One autocannon run of creates, each with a fresh subdomain. */
async function load(port: number, opts: { seconds: number; connections: number; rate?: number }): Promise<Measured> {
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
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    ok: result["2xx"],
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
  };
}

async function truncate(url: string | undefined): Promise<void> {
  if (!url) return;
  const c = postgres(url, { max: 1, onnotice: () => {} });
  await c`truncate routes`;
  await c.end({ timeout: 2 });
}

async function measure(kind: Kind, url: string | undefined, seconds: number, connections: number, rate: number) {
  await truncate(url);
  const s = await startServer(kind, url);
  try {
    await load(s.port, { seconds: 1, connections }); // warm-up: JIT, connection pools
    const throughput = await load(s.port, { seconds, connections });
    const fixed = await load(s.port, { seconds, connections, rate });
    return { throughput, fixed };
  } finally {
    await stopServer(s);
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

  const rows: { name: string; baseline: string; m: Awaited<ReturnType<typeof measure>> }[] = [];
  try {
    console.error(`create-route benchmark: ${seconds}s per run, ${connections} connections, fixed rate ${rate} req/s`);
    const plan: [string, Kind, string][] = [];
    if (pgUrl) plan.push(["baseline: Hono + postgres.js INSERT", "baseline-postgres", ""], ["hatch-proxy API on Postgres", "ours-postgres", "baseline-postgres"]);
    plan.push(["baseline: Hono + PGlite INSERT", "baseline-pglite", ""], ["hatch-proxy API on PGlite", "ours-pglite", "baseline-pglite"]);
    for (const [name, kind, baseline] of plan) {
      console.error(`  measuring ${name} …`);
      rows.push({ name, baseline, m: await measure(kind, kind.endsWith("postgres") ? pgUrl : undefined, seconds, connections, rate) });
    }
  } finally {
    if (pgUrl) await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
    await admin.end({ timeout: 2 });
  }

  const kindOf = (name: string) => rows.find((r) => r.name === name);
  const table = [
    ["target", "req/s", "p50 ms", "p99 ms", "ratio", `p50@${rate}`, `p99@${rate}`, "non-2xx", "errors"],
    ...rows.map((r) => {
      const base = rows.find((b) => b.baseline === "" && b.name.includes(r.name.includes("Postgres") ? "postgres.js" : "PGlite"));
      const ratio = r.baseline && base ? fmt(r.m.throughput.rps / base.m.throughput.rps, 2) : "1.00 (baseline)";
      return [
        r.name,
        fmt(r.m.throughput.rps),
        fmt(r.m.throughput.p50, 1),
        fmt(r.m.throughput.p99, 1),
        ratio,
        fmt(r.m.fixed.p50, 1),
        fmt(r.m.fixed.p99, 1),
        String(r.m.throughput.non2xx + r.m.fixed.non2xx),
        String(r.m.throughput.errors + r.m.fixed.errors),
      ];
    }),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  console.log("");
  for (const row of table) console.log(row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  "));
  console.log("");
  const ours = kindOf("hatch-proxy API on Postgres");
  const base = kindOf("baseline: Hono + postgres.js INSERT");
  if (ours && base) {
    const ratio = ours.m.throughput.rps / base.m.throughput.rps;
    console.log(`goal: throughput ratio on Postgres >= 0.70: ${fmt(ratio, 2)} ${ratio >= 0.7 ? "MET" : "NOT MET"}`);
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
