/** Small things a first hour runs into: the README's texts are the product's, and npm ci has nothing to warn about. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { formatDuration, parseDuration, testConfig } from "../src/config.ts";
import { VmLifecycle, type LifecycleDeps } from "../src/lifecycle/vm-lifecycle.ts";
import { REPO } from "./helpers/front.ts";

const readme = readFileSync(join(REPO, "README.md"), "utf8");

describe("durations in messages", () => {
  it("are written the way people write them: no zero units, and read back the same", () => {
    const cases: [number, string][] = [[60_000, "1m"], [90_000, "1m30s"], [600_000, "10m"], [3_600_000, "1h"], [3_630_000, "1h30s"], [5000, "5s"], [250, "250ms"], [0, "0s"]];
    for (const [ms, text] of cases) {
      expect(formatDuration(ms)).toBe(text);
      expect(parseDuration(text)).toBe(ms);
    }
  });

  it("the README's troubleshooting says what the product says with the defaults", () => {
    const config = testConfig();
    const lifecycle = new VmLifecycle({ config, metrics: { waiters: () => {} } } as unknown as LifecycleDeps);
    expect(lifecycle.timeoutMessage).toBe("vm did not become ready within 1m (HATCH_PROXY_WAKE_TIMEOUT)");
    expect(readme).toContain(`| 504 \`${lifecycle.timeoutMessage}\` |`);
    expect(readme).toContain(`drain did not finish within ${formatDuration(config.idleDrainTimeoutMs)} (HATCH_IDLE_DRAIN_TIMEOUT)`);
  });
});

describe("npm ci", () => {
  it("runs no install script the project has not allowed in package.json (npm warns about those)", () => {
    const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { allowScripts?: Record<string, boolean> };
    const lock = JSON.parse(readFileSync(join(REPO, "package-lock.json"), "utf8")) as { packages: Record<string, { version?: string; hasInstallScript?: boolean }> };
    const withScripts = Object.entries(lock.packages)
      .filter(([, p]) => p.hasInstallScript)
      .map(([path, p]) => ({ name: path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length), version: p.version }));
    expect(withScripts.length).toBeGreaterThan(0);
    for (const { name, version } of withScripts) {
      const allowed = pkg.allowScripts?.[name] ?? pkg.allowScripts?.[`${name}@${version}`];
      expect(allowed, `${name}@${version} has an install script that package.json's allowScripts does not cover`).toBe(true);
    }
  });
});
