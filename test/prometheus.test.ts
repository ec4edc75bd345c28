/**
 * The shipped Prometheus files with Debian's Prometheus: `promtool test rules` on the alert rules,
 * and a real Prometheus running prometheus/prometheus.yml (its targets moved to the ports of one
 * `hatch-proxy start`, Traefik in front when there is one) that scrapes every target with up = 1
 * and loads and evaluates every rule. Skipped, saying so, without promtool and prometheus;
 * REQUIRE_PROMETHEUS=1 (set by .ci/run) makes that a failure.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { freePort, traefikBinary } from "./helpers/env.ts";
import { killTraefiks, REPO, startProduct, stopProcess, waitFor, type Product } from "./helpers/front.ts";

const DIR = join(REPO, "prometheus");

function binary(name: string): string | undefined {
  try {
    return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}
const promtool = binary("promtool");
const prometheus = binary("prometheus");
if (!promtool || !prometheus) {
  const missing = [!promtool && "promtool", !prometheus && "prometheus"].filter(Boolean).join(" and ");
  if (process.env.REQUIRE_PROMETHEUS === "1") throw new Error(`REQUIRE_PROMETHEUS=1 but ${missing} is not installed (apt-get install prometheus)`);
  console.warn(`[prometheus] ${missing} not installed (Debian: apt-get install prometheus): the alert rule tests are SKIPPED`);
}

describe.runIf(promtool)("the alert rules", () => {
  it("pass promtool's checks and unit tests", () => {
    expect(execFileSync(promtool!, ["check", "rules", "alerts.yml"], { cwd: DIR, encoding: "utf8" })).toMatch(/SUCCESS: \d+ rules found/);
    expect(execFileSync(promtool!, ["test", "rules", "alerts.test.yml"], { cwd: DIR, encoding: "utf8" })).toMatch(/SUCCESS/);
  });
});

interface Shipped {
  rule_files: string[];
  scrape_configs: { job_name: string; static_configs: { targets: string[] }[]; [k: string]: unknown }[];
  [k: string]: unknown;
}

describe.runIf(promtool && prometheus)("Debian's Prometheus against npm start", { timeout: 120_000 }, () => {
  const bin = traefikBinary();
  let product: Product;
  let server: ChildProcess | undefined;
  let dir: string;
  let url: string;
  let log = "";

  beforeAll(async () => {
    product = await startProduct({ ipPrefix: "127.0.150", env: bin ? { HATCH_PROXY_FRONT: "traefik", TRAEFIK_BIN: bin } : { HATCH_PROXY_FRONT: "embedded" } });
    // The shipped file, with compose's addresses replaced by this product's and a fast cadence.
    const shipped = parse(readFileSync(join(DIR, "prometheus.yml"), "utf8")) as Shipped;
    const targets: Record<string, string | undefined> = {
      "hatch-proxy-api": `127.0.0.1:${product.ports.api}`,
      "hatch-proxy-wake": product.traefikApi() ? `127.0.0.1:${product.ports.wake}` : undefined,
      traefik: product.traefikApi()?.replace(/^http:\/\//, ""),
    };
    const config: Shipped = {
      ...shipped,
      global: { scrape_interval: "1s", evaluation_interval: "1s" },
      rule_files: shipped.rule_files.map((f) => join(DIR, f.split("/").at(-1)!)),
      scrape_configs: shipped.scrape_configs
        .filter((c) => targets[c.job_name])
        .map((c) => ({ ...c, static_configs: [{ targets: [targets[c.job_name]!] }] })),
    };
    dir = mkdtempSync(join(tmpdir(), "hatch-prometheus-"));
    writeFileSync(join(dir, "prometheus.yml"), stringify(config));
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    server = spawn(prometheus!, [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ["ignore", "pipe", "pipe"] });
    server.stdout!.on("data", (c) => (log += c));
    server.stderr!.on("data", (c) => (log += c));
  });
  afterAll(async () => {
    if (server) await stopProcess(server, "SIGTERM");
    if (product) {
      await stopProcess(product.child);
      killTraefiks(product.dir);
      rmSync(product.dir, { recursive: true, force: true });
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const api = async (path: string) => ((await (await fetch(`${url}/api/v1/${path}`)).json()) as { data: any }).data;

  it("scrapes every target of npm start with up = 1", async () => {
    const expected = product.traefikApi() ? ["hatch-proxy-api", "hatch-proxy-wake", "traefik"] : ["hatch-proxy-api"];
    if (!product.traefikApi()) console.warn("[prometheus] no Traefik binary: only the route API is scraped (npm start serves the proxy itself)");
    let targets: { labels: { job: string }; health: string; lastError: string }[] = [];
    await waitFor(
      async () => {
        targets = (await api("targets").catch(() => ({ activeTargets: [] }))).activeTargets;
        return targets.length === expected.length && targets.every((t) => t.health === "up");
      },
      `every target up (${log.slice(-1500)})`,
      30_000,
      250,
    );
    expect(targets.map((t) => t.labels.job).sort()).toEqual(expected);
    const up = (await api("query?query=up")).result as { metric: { job: string }; value: [number, string] }[];
    expect(up.map((r) => [r.metric.job, r.value[1]]).sort()).toEqual(expected.map((j) => [j, "1"]));
  });

  it("loads every rule of alerts.yml and evaluates each without error", async () => {
    const names = (parse(readFileSync(join(DIR, "alerts.yml"), "utf8")) as { groups: { rules: { alert: string }[] }[] }).groups.flatMap((g) => g.rules.map((r) => r.alert));
    let rules: { name: string; health: string; lastError?: string }[] = [];
    await waitFor(
      async () => {
        rules = ((await api("rules")).groups as { rules: typeof rules }[]).flatMap((g) => g.rules);
        return rules.length === names.length && rules.every((r) => r.health === "ok");
      },
      "every rule evaluated",
      30_000,
      250,
    );
    expect(rules.map((r) => r.name).sort()).toEqual([...names].sort());
    // Nothing is wrong with a product that just started: no alert fires.
    expect((await api("alerts")).alerts.filter((a: { state: string }) => a.state === "firing")).toEqual([]);
  });
});
