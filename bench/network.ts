/**
 * The network the benchmarks' simulated VMs live on: BENCH_SIM_NETWORK=loopback (default; VMs on
 * host addresses 127.a.b.N) or bridge (each VM in a network namespace of its own on a veth joined to
 * a Linux bridge, as on Hatch: a VM being snapshotted is a black hole, a snapshotted one unreachable).
 * The bridge needs root and a network namespace holding nothing but `lo`: `npm run bench -- wake
 * sleep --network=bridge` (or `--network=both`) makes one with `unshare -n`.
 */
import { readFileSync, writeFileSync } from "node:fs";
import type { SimulatorOptions } from "../src/vms/simulator/index.ts";
import { ip } from "../src/vms/simulator/network/ip-command.ts";
import { bridgeSubnetFor } from "../src/vms/simulator/network/subnet.ts";

export type BenchNetwork = "loopback" | "bridge";

/** BENCH_SIM_NETWORK, checked; an unknown value is an error, not a silent loopback run. */
export function benchNetwork(): BenchNetwork {
  const v = (process.env.BENCH_SIM_NETWORK ?? "loopback").trim() || "loopback";
  if (v !== "loopback" && v !== "bridge") throw new Error(`BENCH_SIM_NETWORK=${v}: choose loopback or bridge`);
  return v;
}

/**
 * Simulator options for the benchmark's network. Each simulator has its own loopback prefix
 * `127.a.b`; on the bridge it gets the subnet `10.a.b.0/24` (as the tests map theirs).
 */
export function benchSimOptions(ipPrefix: string): Pick<SimulatorOptions, "ipPrefix" | "network" | "subnet"> {
  return benchNetwork() === "bridge" ? { network: "bridge", subnet: bridgeSubnetFor(ipPrefix) } : { ipPrefix };
}

const HOW = "run it through `npm run bench -- <name> --network=bridge` (root: it uses `unshare -n`), or by hand: unshare -n -- sh -c 'ip link set lo up && BENCH_SIM_NETWORK=bridge npx tsx bench/<name>.ts'";

/**
 * On the bridge, resolves only in a network namespace that holds nothing but an up `lo` (what the
 * simulator demands, checked before any child starts so the run stops at once with a reason).
 */
export async function assertBenchNetwork(): Promise<void> {
  if (benchNetwork() !== "bridge") return;
  let links: { ifname: string; flags?: string[] }[];
  try {
    links = JSON.parse(await ip("-j", "link", "show")) as { ifname: string; flags?: string[] }[];
  } catch (err) {
    throw new Error(`BENCH_SIM_NETWORK=bridge needs the \`ip\` command (iproute2): ${(err as Error).message}`);
  }
  const foreign = links.filter((l) => l.ifname !== "lo").map((l) => l.ifname);
  if (foreign.length) {
    throw new Error(`BENCH_SIM_NETWORK=bridge: this process is not in a network namespace of its own (it holds ${foreign.join(", ")}); ${HOW}`);
  }
  if (!links.find((l) => l.ifname === "lo")?.flags?.includes("UP")) {
    throw new Error(`BENCH_SIM_NETWORK=bridge: lo is down in this network namespace (\`ip link set lo up\` first); ${HOW}`);
  }
}

/** BENCH_SUMMARY_FILE: where a benchmark leaves its key figures as JSON for bench/run.ts's side-by-side table. */
export function writeSummary(summary: unknown): void {
  const file = process.env.BENCH_SUMMARY_FILE;
  if (file) writeFileSync(file, JSON.stringify({ network: benchNetwork(), ...(summary as object) }));
}

export function readSummary(file: string): Record<string, any> | undefined {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as Record<string, any>;
  } catch {
    return undefined;
  }
}
