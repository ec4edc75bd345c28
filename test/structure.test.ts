/**
 * The layout the code map in the README describes, checked on the sources: the lifecycle never
 * imports the wake shell, no two files import each other (type imports included), no factory or
 * class grows past 200 lines, and the subdomain pattern is written once.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SRC = join(ROOT, "src");

function sources(dir = SRC): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith(".ts") ? [p] : [];
  });
}

/** Every relative import and re-export of each file (static, dynamic, type-only alike). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sources()) {
    const text = readFileSync(file, "utf8");
    const targets = new Set<string>();
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s+(?:type\s+)?(?:[^"';]*?\s+from\s+)?["'](\.[^"']+)["']/g)) targets.add(normalize(join(dirname(file), m[1]!)));
    for (const m of text.matchAll(/import\(\s*["'](\.[^"']+)["']\s*\)/g)) targets.add(normalize(join(dirname(file), m[1]!)));
    graph.set(file, [...targets]);
  }
  return graph;
}

/** The strongly connected groups of more than one file (Tarjan). */
function cycles(graph: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const group: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        group.push(w);
      } while (w !== v);
      if (group.length > 1) found.push(group.map((f) => relative(ROOT, f)).sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

describe("the layout of src/", () => {
  const graph = importGraph();

  it("finds the imports it checks (the checker itself works)", () => {
    expect(graph.get(join(SRC, "main.ts"))?.length).toBeGreaterThan(0);
    expect(cycles(new Map([["a", ["b"]], ["b", ["a"]], ["c", ["a"]]]))).toEqual([["a", "b"]].map((g) => g.map((f) => relative(ROOT, f)).sort()));
  });

  it("no file in lifecycle/ imports from wake/", () => {
    const bad = [...graph].flatMap(([file, targets]) =>
      file.startsWith(join(SRC, "lifecycle")) ? targets.filter((t) => t.startsWith(join(SRC, "wake"))).map((t) => `${relative(ROOT, file)} → ${relative(ROOT, t)}`) : [],
    );
    expect(bad).toEqual([]);
  });

  it("has no import cycle, type-only imports included", () => {
    expect(cycles(graph)).toEqual([]);
  });

  it("has no factory function or class over 200 lines", () => {
    const long: string[] = [];
    for (const file of sources()) {
      const lines = readFileSync(file, "utf8").split("\n");
      lines.forEach((line, i) => {
        const m = /^(?:export\s+)?(?:async\s+)?(?:function\s+(\w+)|class\s+(\w+))/.exec(line);
        if (!m) return;
        const end = lines.findIndex((l, j) => j > i && /^\}/.test(l));
        const n = end - i + 1;
        if (n > 200) long.push(`${relative(ROOT, file)}: ${m[1] ?? m[2]} (${n} lines)`);
      });
    }
    expect(long).toEqual([]);
  });

  it("src/services.ts is gone, and the subdomain label pattern is written once", () => {
    expect(existsSync(join(SRC, "services.ts"))).toBe(false);
    const pattern = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
    const where = sources().filter((f) => readFileSync(f, "utf8").includes(pattern));
    expect(where.map((f) => relative(ROOT, f))).toEqual(["src/subdomain.ts"]);
  });
});
