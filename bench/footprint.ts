/**
 * Footprint benchmark: `npm run bench -- footprint`.
 *
 * `hatch-proxy start` with HATCH_PROXY_FRONT=embedded, from the build (`node dist/main.js start`)
 * and from the sources (`node --import tsx src/main.ts start`, what `npm start` runs), each in a
 * directory of its own: resident memory of the whole process tree (peak, and steady after
 * FOOTPRINT_IDLE_S idle seconds, default 45), JS heap in use, and spawn-to-ready time (/readyz 200);
 * the peak is over the whole run (start, work, and the cycles where there are some).
 * Modes: PGlite from an empty data directory, PGlite again on that directory, and PostgreSQL with
 * 1,000 routes on 100 VMs (each route asked once through the proxy). Then 40 sleep/wake cycles of
 * one VM (after 5 to warm up): steady RSS before and after them, each after the same idle time.
 * And the CLI's start time against `node -e 0`.
 * Goals (issue 19): PGlite first start peak <= 350 MB, steady <= 250 MB (goal 150); Postgres with
 * 1,000 routes <= 120 MB (goal 80), ready <= 3 s; 40 cycles grow RSS <= 30 MB; CLI <= 2x node -e 0.
 * MB here are 10^6 bytes. Postgres: a fresh database on BENCH_POSTGRES_URL, dropped at the end.
 */
import { spawnSync } from "node:child_process";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { cliStartTimes, launch, type Launched } from "./footprint-run.ts";
import { mb } from "../test/helpers/process-tree.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const IDLE_MS = Number(process.env.FOOTPRINT_IDLE_S ?? 45) * 1000;
const ADMIN = process.env.BENCH_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const RUNNERS = { dist: ["dist/main.js", "start"], tsx: ["--import", "tsx", "src/main.ts", "start"] } as const;
type RunnerName = keyof typeof RUNNERS;

interface Row {
  what: string;
  runner: RunnerName;
  readyMs: number;
  peak: number;
  steady: number;
  heap: number;
  /** RSS steady before the cycles, right after the 40th, and steady again after them. */
  cycles?: { before: number; during: number; after: number };
}
const rows: Row[] = [];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Idles, then reads steady RSS and the heap in use; optionally runs sleep/wake cycles after. */
async function measure(what: string, runner: RunnerName, run: Launched, cycles: boolean): Promise<void> {
  await sleep(IDLE_MS);
  const row: Row = { what, runner, readyMs: run.readyMs, peak: 0, steady: run.sampler.sample(), heap: await run.heapUsed() };
  if (cycles) {
    // Steady before and steady after, each after the same idle time: what the cycles left behind,
    // not the garbage V8 has not collected yet (the young generation regrows to 32 MB under load,
    // and the memory reducer gives it back once the process is idle).
    const vm = await run.vmWithRoute("cycled");
    for (let i = 0; i < 5; i++) await run.sleepAndWake(vm, "cycled");
    await sleep(IDLE_MS);
    const before = run.sampler.sample();
    for (let i = 0; i < 40; i++) await run.sleepAndWake(vm, "cycled");
    const during = run.sampler.sample();
    await sleep(IDLE_MS);
    row.cycles = { before, during, after: run.sampler.sample() };
  }
  row.peak = run.sampler.peak;
  rows.push(row);
  console.log(`${what} (${runner}): ready ${run.readyMs} ms, peak ${mb(row.peak)} MB, steady ${mb(row.steady)} MB, heap ${mb(row.heap)} MB${row.cycles ? `, 40 cycles ${mb(row.cycles.before)} → ${mb(row.cycles.during)} → ${mb(row.cycles.after)} MB` : ""}`);
  await run.stop();
}

/** 100 VMs with 10 routes each, every route asked once through the proxy. */
async function thousandRoutes(run: Launched): Promise<void> {
  const vms: string[] = [];
  for (let v = 0; v < 100; v++) vms.push(await run.createVm());
  const jobs = vms.flatMap((vm, v) => Array.from({ length: 10 }, (_, r) => ({ vm, sub: `vm${v}-r${r}` })));
  for (let i = 0; i < jobs.length; i += 20) await Promise.all(jobs.slice(i, i + 20).map((j) => run.addRoute(j.vm, j.sub)));
  for (let i = 0; i < jobs.length; i += 20) await Promise.all(jobs.slice(i, i + 20).map((j) => run.viaProxy(j.sub)));
}

async function withPostgres(fn: (url: string) => Promise<void>): Promise<boolean> {
  const admin = postgres(ADMIN, { max: 1, onnotice: () => {}, connect_timeout: 3 });
  const name = `hatch_footprint_${process.pid}`;
  try {
    await admin.unsafe(`create database ${name}`);
  } catch {
    await admin.end();
    return false;
  }
  const url = new URL(ADMIN);
  url.pathname = `/${name}`;
  try {
    await fn(url.toString());
  } finally {
    await admin.unsafe(`drop database if exists ${name} with (force)`);
    await admin.end();
  }
  return true;
}

console.log(`load average ${loadavg().map((l) => l.toFixed(2)).join(" ")}; idle ${IDLE_MS / 1000} s per steady figure`);
const build = spawnSync(process.execPath, ["--import", "tsx", "scripts/build.ts"], { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] });
if (build.status !== 0) throw new Error("npm run build failed");

for (const runner of ["dist", "tsx"] as const) {
  const first = await launch(RUNNERS[runner], {});
  await measure("PGlite, first start", runner, first, false);
  if (runner === "dist") await measure("PGlite, restart", runner, await launch(RUNNERS[runner], {}, first.dir), true);
  const pg = await withPostgres(async (url) => {
    const run = await launch(RUNNERS[runner], { DATABASE_URL: url });
    await thousandRoutes(run);
    await measure("Postgres, 1,000 routes on 100 VMs", runner, run, runner === "dist");
  });
  if (!pg) console.log(`Postgres at ${ADMIN} is not reachable: its rows are left out`);
}

const cli = cliStartTimes();
console.log("\n| what | runner | spawn → ready | peak RSS | steady RSS | JS heap | 40 sleep/wake cycles, steady before → after |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  const cyc = r.cycles
    ? `${mb(r.cycles.before)} → ${mb(r.cycles.after)} MB (${r.cycles.after >= r.cycles.before ? "+" : ""}${mb(r.cycles.after - r.cycles.before)}; ${mb(r.cycles.during)} right after the 40th)`
    : "—";
  console.log(`| ${r.what} | ${r.runner} | ${(r.readyMs / 1000).toFixed(2)} s | ${mb(r.peak)} MB | ${mb(r.steady)} MB | ${mb(r.heap)} MB | ${cyc} |`);
}
const distOf = (what: string) => rows.find((r) => r.what === what && r.runner === "dist");
const tsxOf = (what: string) => rows.find((r) => r.what === what && r.runner === "tsx");
for (const what of ["PGlite, first start", "Postgres, 1,000 routes on 100 VMs"]) {
  const [d, t] = [distOf(what), tsxOf(what)];
  if (d && t) console.log(`${what}: dist / tsx peak ${(d.peak / t.peak).toFixed(2)}, steady ${(d.steady / t.steady).toFixed(2)}`);
}
console.log(`\nCLI start, median of ${cli.runs} (node -e 0: ${cli.baselineMs.toFixed(0)} ms):`);
for (const [name, ms] of Object.entries(cli.commands)) console.log(`  ${name.padEnd(40)} ${ms.toFixed(0).padStart(5)} ms  ${(ms / cli.baselineMs).toFixed(2)}x`);

const goal = (what: string, value: number | undefined, limit: number, unit: string, stretch?: number) => {
  if (value === undefined) return console.log(`goal: ${what}: not measured`);
  const met = value <= limit ? "MET" : "NOT MET";
  const aim = stretch === undefined ? "" : `; goal ${stretch} ${unit} ${value <= stretch ? "met" : "not met"}`;
  console.log(`goal: ${what} <= ${limit} ${unit}: ${unit === "MB" ? mb(value * 1e6) : value.toFixed(2)} ${met}${aim}`);
};
const first = distOf("PGlite, first start");
const pgRow = distOf("Postgres, 1,000 routes on 100 VMs");
console.log("");
goal("PGlite first start, peak RSS", first && first.peak / 1e6, 350, "MB");
goal("PGlite first start, steady RSS", first && first.steady / 1e6, 250, "MB", 150);
goal("Postgres, 1,000 routes on 100 VMs, steady RSS", pgRow && pgRow.steady / 1e6, 120, "MB", 80);
goal("Postgres, spawn to ready", pgRow && pgRow.readyMs / 1000, 3, "s", 1);
for (const r of rows.filter((x) => x.cycles)) goal(`${r.what}: growth over 40 sleep/wake cycles`, (r.cycles!.after - r.cycles!.before) / 1e6, 30, "MB");
for (const [name, ms] of Object.entries(cli.commands).filter(([n]) => !n.includes("tsx"))) goal(`${name} / node -e 0`, ms / cli.baselineMs, 2, "x");
