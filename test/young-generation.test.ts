/**
 * The young-generation ceiling main.ts sets for service processes: under a server's kind of load
 * (short bursts of allocation, the event loop turning between them) the new space stops at the
 * ceiling, where V8 alone doubles it up to 32 MB. Each case runs in a process of its own: the
 * setting is process-wide.
 */
import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { REPO } from "./helpers/front.ts";

/** The new space's size (bytes) after a server-like load, with the ceiling or without. */
function newSpaceAfterLoad(ceiling: boolean): number {
  const script = `
    import { getHeapSpaceStatistics } from "node:v8";
    import { capYoungGeneration, YOUNG_GENERATION_CEILING } from "./src/young-generation.ts";
    if (${ceiling}) capYoungGeneration();
    let kept = [];
    for (let turn = 0; turn < 3000; turn++) {
      for (let i = 0; i < 1000; i++) { kept.push({ i, s: "x" + i, a: [i, i] }); if (kept.length > 20000) kept = []; }
      await new Promise((r) => setImmediate(r));
    }
    process.stdout.write(String(getHeapSpaceStatistics().find((s) => s.space_name === "new_space").space_size));
  `;
  return Number(execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: REPO, encoding: "utf8", timeout: 60_000 }));
}

describe("the young-generation ceiling", { timeout: 90_000 }, () => {
  it("keeps the new space at 8 MB under load, where V8 alone grows it past that", async () => {
    const { YOUNG_GENERATION_CEILING } = await import("../src/young-generation.ts");
    expect(YOUNG_GENERATION_CEILING).toBe(8 * 1024 * 1024);
    expect(newSpaceAfterLoad(true)).toBeLessThanOrEqual(YOUNG_GENERATION_CEILING);
    expect(newSpaceAfterLoad(false)).toBeGreaterThan(YOUNG_GENERATION_CEILING);
  });
});
