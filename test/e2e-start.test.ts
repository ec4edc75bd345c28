/**
 * `npm start` as a newcomer meets it: the real entry point (bin/hatch-proxy.js start) in a fresh
 * directory, then README's walkthrough run as written by bash, in embedded mode and, when a Traefik
 * binary exists, with Traefik in front.
 */
import { afterAll, describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { traefikBinary } from "./helpers/env.ts";
import { startProduct, type Product } from "./helpers/front.ts";

const repo = fileURLToPath(new URL("..", import.meta.url));
const readme = readFileSync(join(repo, "README.md"), "utf8");

/** The shell block under "## Walkthrough" in README.md. */
function walkthroughScript(): string {
  const section = readme.slice(readme.indexOf("## Walkthrough"));
  const m = /```sh\n([\s\S]*?)```/.exec(section);
  if (!m) throw new Error("README.md has no sh block under ## Walkthrough");
  return m[1]!;
}

function runWalkthrough(cwd: string) {
  const r = spawnSync("bash", ["-euo", "pipefail", "-c", walkthroughScript()], { cwd, encoding: "utf8", timeout: 60_000 });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

function checkWalkthroughOutput(out: string) {
  // What README says each step prints.
  expect(out).toMatch(/"subdomain":"myapp"/);
  expect(out).toMatch(/"target_port":8080/);
  const activity = out.split("\n").find((l) => l.includes('"idle_timeout_s"'));
  expect(JSON.parse(activity!)).toMatchObject({ state: "running", open_connections: 0, idle_timeout_s: 600, sleep: null });
  expect(out).toMatch(/"state":"snapshotted"/);
  const echo = out.split("\n").find((l) => l.includes('"path":"/hello"'));
  expect(echo, `no echo of /hello in:\n${out}`).toBeDefined();
  expect(JSON.parse(echo!)).toMatchObject({ method: "GET", path: "/hello", port: 8080 });
  expect(out).toMatch(/^HTTP\/1\.1 200 OK\r?$/m);
  const timing = /^server-timing: wake;dur=(\d+(?:\.\d+)?)\r?$/im.exec(out);
  expect(timing, `no Server-Timing header in:\n${out}`).not.toBeNull();
  expect(Number(timing![1])).toBeGreaterThanOrEqual(300);
}

const modes: [string, Record<string, string>][] = [["embedded proxy", { HATCH_PROXY_FRONT: "embedded" }]];
const traefik = traefikBinary();
if (traefik) modes.push(["Traefik in front", { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: traefik }]);
else console.warn("[e2e-start] no Traefik binary: the Traefik-in-front walkthrough is SKIPPED");

describe.each(modes)("npm start with %s", (_name, env) => {
  let started: Product | undefined;
  /** Ctrl-C, as a person stops it; its exit code (null if it had to be killed after 20 s). */
  const stop = async (p: Product) => {
    p.child.kill("SIGINT");
    const timer = setTimeout(() => p.child.kill("SIGKILL"), 20_000);
    const code = await p.exited;
    clearTimeout(timer);
    rmSync(p.dir, { recursive: true, force: true });
    return code;
  };
  afterAll(async () => {
    if (started) await stop(started);
  });

  it("prints a banner with the key and runs README's walkthrough as written", async () => {
    // As a newcomer runs it: the default addresses, a fresh directory, the database made on the spot.
    started = await startProduct({ ports: "defaults", freshDatabase: true, env: { HATCH_LOG_LEVEL: "warn", ...env } });
    const key = readFileSync(join(started.dir, "data/api-key"), "utf8").trim();
    expect(started.output()).toContain(`API key     ${key}`);
    expect(started.output()).toContain(env.HATCH_PROXY_FRONT === "traefik" ? "via Traefik" : "via embedded proxy");
    const run = runWalkthrough(started.dir);
    expect(run.status, `walkthrough failed:\n${run.out}\n${run.err}\n--- product output ---\n${started.output()}`).toBe(0);
    checkWalkthroughOutput(run.out);
    // The wake shows in the API's metrics, whichever proxy (sidecar or embedded) did it.
    const metrics = await (await fetch("http://127.0.0.1:8080/metrics")).text();
    expect(metrics).toMatch(/^hatch_wakes_total\{outcome="ok"\} 1$/m);
    expect(metrics).toMatch(/^hatch_api_requests_total\{method="POST",route="\/vms\/:vm_id\/routes",code="201"\} 1$/m);
  }, 120_000);

  it("stops cleanly on Ctrl-C", async () => {
    const code = await stop(started!);
    started = undefined;
    expect(code).toBe(0);
  }, 30_000);
});
