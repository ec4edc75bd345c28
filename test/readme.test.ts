import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { ENV_VARS } from "../src/config.ts";
import { envTable, readmeTable } from "../scripts/env-table.ts";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");

describe("README", () => {
  it("documents every environment variable the config parser knows, with its default", () => {
    const table = readmeTable(readme);
    expect(table, "README.md lost its env-table markers").toBeDefined();
    expect(table).toBe(envTable());
    const documented = [...table!.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(Object.keys(ENV_VARS).sort());
  });

  it("names the two commands and the test command CI runs", () => {
    expect(readme).toContain("npm ci && npm start");
    expect(readme).toContain("npm test");
    expect(readFileSync(new URL("../.ci/run", import.meta.url), "utf8")).toMatch(/^npm test$/m);
  });
});
