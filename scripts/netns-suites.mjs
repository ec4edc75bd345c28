#!/usr/bin/env node
// The suites that must also hold on Hatch's real network: each runs again, in a network namespace
// of its own (`unshare -n`), with the simulator's VMs on a bridge (HATCH_TEST_SIM_NETWORK=bridge),
// where a VM being snapshotted is a black hole and a snapshotted one is unreachable, as on Hatch.
// PostgreSQL is reached through its Unix socket (test/helpers/pg-relay.mjs). Two run at a time.
// Without namespaces (not root) they are skipped, and say so; REQUIRE_NETNS=1 makes that a failure.
import { spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const BRIDGE_SUITES = [
  "test/bridge-hatch.test.ts",
  "test/sleep-traefik-loss.test.ts",
  "test/sleep-traefik-idle.test.ts",
  "test/wake-proxy.test.ts",
];
const files = process.argv.length > 2 ? process.argv.slice(2) : BRIDGE_SUITES;

const probe = spawnSync("unshare", ["-n", "true"], { encoding: "utf8" });
if (probe.status !== 0) {
  const why = (probe.stderr || probe.error?.message || `exit ${probe.status}`).trim();
  if (process.env.REQUIRE_NETNS === "1") {
    console.error(`REQUIRE_NETNS=1 but no network namespace can be made here (unshare -n: ${why})`);
    process.exit(1);
  }
  console.warn(`[netns-suites] no network namespaces here (unshare -n: ${why}): the bridge-network runs of ${files.join(", ")} are SKIPPED (run as root)`);
  process.exit(0);
}

const vitest = join(ROOT, "node_modules", ".bin", "vitest");
const relay = join(ROOT, "test", "helpers", "pg-relay.mjs");

function run(file) {
  return new Promise((resolve) => {
    const script = `ip link set lo up && { node ${JSON.stringify(relay)} >/dev/null 2>&1 & } && sleep 0.3 && exec ${JSON.stringify(vitest)} run ${JSON.stringify(file)}`;
    const started = Date.now();
    const child = spawn("unshare", ["-n", "--", "sh", "-c", script], {
      cwd: ROOT,
      env: { ...process.env, HATCH_TEST_SIM_NETWORK: "bridge", FORCE_COLOR: "0" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (c) => (out += c));
    child.stderr.on("data", (c) => (out += c));
    // eslint-disable-next-line no-control-regex
    child.on("exit", (code, signal) => resolve({ file, code: code ?? 1, signal, out: out.replace(/\x1b\[[0-9;]*m/g, ""), ms: Date.now() - started }));
  });
}

const queue = [...files];
const results = [];
await Promise.all(
  Array.from({ length: Math.min(2, queue.length) }, async () => {
    for (let f = queue.shift(); f; f = queue.shift()) {
      const r = await run(f);
      results.push(r);
      const summary = r.out.split("\n").filter((l) => /^\s*(Test Files|Tests)\s/.test(l)).join(" | ").replace(/\s+/g, " ");
      console.log(`[bridge] ${r.code === 0 ? "ok  " : "FAIL"} ${f} in ${(r.ms / 1000).toFixed(0)} s: ${summary || "(no summary)"}`);
      if (r.code !== 0 || process.env.NETNS_SUITES_VERBOSE === "1") console.log(r.out);
      else for (const line of r.out.split("\n")) if (/^\[[a-z-]+\]/.test(line)) console.log(`  ${line}`);
    }
  }),
);
process.exit(results.every((r) => r.code === 0) ? 0 : 1);
