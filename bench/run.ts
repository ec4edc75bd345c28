/**
 * `npm run bench [-- name …] [--network=loopback|bridge|both]`: runs each benchmark in its own
 * process, one after another (they measure throughput, so they must not share the 2 cores), and
 * stops at the first failure. Each prints its own table with ratios against a baseline measured in
 * the same run.
 *
 * `--network` (default: BENCH_SIM_NETWORK, else loopback) is where the simulated VMs of `wake` and
 * `sleep` live (bench/network.ts). `bridge` runs them in a network namespace of their own
 * (`unshare -n`, root only, `lo` brought up), where the simulator puts each VM on a veth joined to a
 * Linux bridge, as on Hatch; `both` runs each in loopback and then on the bridge and ends with their
 * key figures side by side. The other benchmarks have no simulated network and run once.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { readSummary, type BenchNetwork } from "./network.ts";

const ALL = ["api", "traefik", "wake", "sleep", "footprint"] as const;
const ON_A_NETWORK = new Set(["wake", "sleep"]);
const args = process.argv.slice(2);
const wanted = args.filter((a) => !a.startsWith("-"));
const unknown = wanted.filter((w) => !(ALL as readonly string[]).includes(w));
if (unknown.length) {
  console.error(`unknown benchmark ${unknown.join(", ")}; choose from ${ALL.join(", ")}`);
  process.exit(2);
}
const networkArg = args.find((a) => a.startsWith("--network="))?.slice("--network=".length) ?? process.env.BENCH_SIM_NETWORK ?? "loopback";
if (!["loopback", "bridge", "both"].includes(networkArg)) {
  console.error(`--network=${networkArg}: choose loopback, bridge or both`);
  process.exit(2);
}
const networks: BenchNetwork[] = networkArg === "both" ? ["loopback", "bridge"] : [networkArg as BenchNetwork];
const names = wanted.length ? wanted : [...ALL];

if (networks.includes("bridge") && names.some((n) => ON_A_NETWORK.has(n))) {
  // Fail now, with the reason, rather than after the loopback half or inside a child.
  const probe = spawnSync("unshare", ["-n", "--", "sh", "-c", "ip link set lo up"], { encoding: "utf8" });
  if (probe.status !== 0) {
    const why = (probe.stderr || probe.error?.message || `exit ${probe.status ?? probe.signal}`).trim();
    console.error(`--network=${networkArg} needs a network namespace of its own for the simulator's bridge (unshare -n, and ip to bring lo up; run as root): ${why}`);
    process.exit(1);
  }
}

const summaryDir = mkdtempSync(join(os.tmpdir(), "hatch-bench-summary-"));
const summaries = new Map<string, Record<string, any>>();
process.on("exit", () => rmSync(summaryDir, { recursive: true, force: true }));

for (const name of names) {
  const file = fileURLToPath(new URL(`./${name}.ts`, import.meta.url));
  for (const network of ON_A_NETWORK.has(name) ? networks : ["loopback" as const]) {
    const label = ON_A_NETWORK.has(name) ? `bench/${name}.ts, ${network}` : `bench/${name}.ts`;
    console.log(`\n=== ${label} (${new Date().toISOString()}) ===`);
    const summaryFile = join(summaryDir, `${name}-${network}.json`);
    const env = { ...process.env, BENCH_SIM_NETWORK: network, BENCH_SUMMARY_FILE: summaryFile };
    const node = [process.execPath, "--import", "tsx", file];
    // On the bridge: a fresh network namespace holding only lo, brought up before node starts.
    const r =
      network === "bridge"
        ? spawnSync("unshare", ["-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", ...node], { stdio: "inherit", env })
        : spawnSync(node[0]!, node.slice(1), { stdio: "inherit", env });
    // A failed run still leaves its figures (a failure is a figure too).
    const s = readSummary(summaryFile);
    if (s) summaries.set(`${name}-${network}`, s);
    if (r.status !== 0) {
      console.error(`${label} failed (exit ${r.status ?? r.signal})`);
      printSideBySide();
      process.exit(1);
    }
  }
}
printSideBySide();

// ---- the side-by-side summary ------------------------------------------------------------------

function printSideBySide() {
  const rows: [string, string, string][] = [];
  const both = (name: string) => summaries.has(`${name}-loopback`) && summaries.has(`${name}-bridge`);
  const cell = (x: unknown) => (x === undefined || x === null || (typeof x === "number" && !Number.isFinite(x)) ? "–" : String(x));
  const ms = (x: number | undefined) => (typeof x === "number" && Number.isFinite(x) ? (Math.abs(x) >= 100 ? Math.round(x).toLocaleString("en-US") : x.toFixed(1)) : "–");
  const add = (what: string, f: (s: Record<string, any>) => unknown, name: string) =>
    rows.push([what, cell(f(summaries.get(`${name}-loopback`)!)), cell(f(summaries.get(`${name}-bridge`)!))]);
  if (both("wake")) {
    const coldKeys = (summaries.get("wake-loopback")!.cold as { n: number; bodyBytes: number }[]).map((r) => `${r.n}/${r.bodyBytes ? `${r.bodyBytes / 1024}K` : "GET"}`);
    for (const [i, key] of coldKeys.entries()) {
      const c = (s: Record<string, any>) => s.cold?.[i] as Record<string, number> | undefined;
      add(`wake cold N=${key}: restores / errors`, (s) => c(s) && `${c(s)!.restores} / ${c(s)!.errors}`, "wake");
      add(`wake cold N=${key}: first / last response − restore, ms`, (s) => c(s) && `${ms(c(s)!.firstMinusRestore)} / ${ms(c(s)!.lastMinusRestore)}`, "wake");
    }
    add("wake hot: sidecar / direct throughput, req/s", (s) => s.hot && `${Math.round(s.hot.side.rps)} / ${Math.round(s.hot.direct.rps)}`, "wake");
    add("wake hot: one at a time, direct / sidecar p50 ms", (s) => s.sequential?.direct && `${(s.sequential.direct.p50 / 1000).toFixed(3)} / ${(s.sequential.sidecar.p50 / 1000).toFixed(3)}`, "wake");
  }
  if (both("sleep")) {
    add("sleep api: non-2xx / ran ≠ once / hash mismatches, of requests", (s) => s.api && `${s.api.non2xx} / ${s.api.notOnce} / ${s.api.badHash} of ${s.api.recs}`, "sleep");
    add("sleep api: sleeps done / wakes", (s) => s.api && `${s.api.done} / ${s.api.wakes}`, "sleep");
    add("sleep api: POST /sleep p50 / max ms", (s) => s.api && `${ms(s.api.drain50)} / ${ms(s.api.drainMax)}`, "sleep");
    add("sleep api: held through a sleep p50 / p99 ms", (s) => s.api && `${ms(s.api.held[0])} / ${ms(s.api.held[1])}`, "sleep");
    add("sleep api: running VM baseline p50 / p99 ms", (s) => s.api && `${ms(s.api.base[0])} / ${ms(s.api.base[1])}`, "sleep");
    add("sleep external: failed GETs / failed POSTs (of POSTs)", (s) => s.ext && `${s.ext.fGet} / ${s.ext.fPost} (of ${s.ext.posts})`, "sleep");
    add("sleep external: POSTs run twice", (s) => s.ext?.twice, "sleep");
    add("sleep external: sleeps with failures; last failure after snapshot max ms", (s) => s.ext && `${s.ext.hit}; ${ms(s.ext.lastMax)}`, "sleep");
    add("sleep external: GETs via 307 fallback p50 / p99 ms", (s) => s.ext && `${ms(s.ext.fallback[0])} / ${ms(s.ext.fallback[1])}`, "sleep");
    add("sleep external: snapshot → running p50 / max ms", (s) => s.ext && `${ms(s.ext.run50)} / ${ms(s.ext.runMax)}`, "sleep");
  }
  if (!rows.length) return;
  const w0 = Math.max(...rows.map((r) => r[0].length), 4);
  const w1 = Math.max(...rows.map((r) => r[1].length), 8);
  console.log(`\n=== loopback vs bridge ===\n${"what".padEnd(w0)}  ${"loopback".padEnd(w1)}  bridge`);
  for (const [a, b, c] of rows) console.log(`${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}`);
}
