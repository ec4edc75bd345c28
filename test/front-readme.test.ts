/**
 * What a reader does, in the order the README tells it, on one `npm start`: the walkthrough, then
 * the CLI examples after it; then a restart, and the banner's "Try it" lines, which must work on
 * the data the reader already has (the banner used to suggest `myapp` again: a 409).
 * Ports are rewritten to free ones (test/e2e-start.test.ts runs the walkthrough on the real defaults).
 */
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { REPO, startProduct, stopProcess, type Product } from "./helpers/front.ts";

const readme = readFileSync(join(REPO, "README.md"), "utf8");
const walkthrough = /```sh\n([\s\S]*?)```/.exec(readme.slice(readme.indexOf("## Walkthrough")))![1]!;
/** The `npx hatch-proxy …` examples of the paragraph after the walkthrough block, in order. */
const cliExamples = (() => {
  const after = readme.slice(readme.indexOf("## Walkthrough"));
  const paragraph = after.slice(after.indexOf("The same with the CLI"), after.indexOf("\n\n", after.indexOf("The same with the CLI")));
  return [...paragraph.matchAll(/`(npx hatch-proxy [^`]+)`/g)].map((m) => m[1]!);
})();

describe("the README and the banner, followed in order", () => {
  let product: Product | undefined;
  afterAll(async () => {
    if (!product) return;
    await stopProcess(product.child);
    rmSync(product.dir, { recursive: true, force: true });
  });

  function bash(script: string, p: Product) {
    const rewritten = script
      .replaceAll("127.0.0.1:8090", `127.0.0.1:${p.ports.sim}`)
      .replaceAll("127.0.0.1:8080", `127.0.0.1:${p.ports.api}`)
      .replaceAll("127.0.0.1:9090", `127.0.0.1:${p.ports.proxy}`);
    // `npx hatch-proxy` is this repository's bin, wherever the reader's shell is.
    const shim = join(p.dir, "shim");
    mkdirSync(shim, { recursive: true });
    writeFileSync(join(shim, "npx"), `#!/bin/sh\n[ "$1" = hatch-proxy ] && shift\nexec "${process.execPath}" "${join(REPO, "bin/hatch-proxy.js")}" "$@"\n`);
    chmodSync(join(shim, "npx"), 0o755);
    const env = { ...process.env, PATH: `${shim}:${process.env.PATH}`, HATCH_HTTP_ADDR: `127.0.0.1:${p.ports.api}`, HATCH_SIM_ADDR: `127.0.0.1:${p.ports.sim}` };
    const r = spawnSync("bash", ["-euo", "pipefail", "-c", rewritten], { cwd: p.dir, env, encoding: "utf8", timeout: 60_000 });
    return { status: r.status, out: r.stdout, err: r.stderr };
  }

  it("runs the walkthrough, then its CLI examples, as written", async () => {
    expect(cliExamples.length).toBeGreaterThanOrEqual(5);
    product = await startProduct({ ipPrefix: "127.0.149", env: { HATCH_PROXY_FRONT: "embedded" }, freshDatabase: true });
    // One shell: the CLI examples use $VM from the walkthrough.
    const script = `${walkthrough}\n${cliExamples.map((c) => `echo "+ ${c}"; ${c}`).join("\n")}\n`;
    const r = bash(script, product);
    expect(r.status, `failed:\n${r.out}\n${r.err}`).toBe(0);
    expect(r.out).toMatch(/"subdomain":"myapp"/);
    expect(r.out).toMatch(/^HTTP\/1\.1 200 OK\r?$/m);
  }, 90_000);

  it("after a restart, the banner's Try-it lines work on the same data", async () => {
    const before = product!;
    await stopProcess(before.child);
    expect(await before.exited).toBe(0);
    product = await startProduct({ dir: before.dir, ports: before.ports, ipPrefix: "127.0.149", env: { HATCH_PROXY_FRONT: "embedded" } });
    const banner = product.output().slice(product.output().indexOf("Try it:"));
    const lines = banner.split("\n").filter((l) => l.trim().startsWith("curl")).map((l) => l.trim().replace(/\s+#.*$/, ""));
    expect(lines).toHaveLength(3);
    expect(lines[1]).not.toContain('"subdomain":"myapp"');
    const vm = bash(lines[0]!, product);
    const id = (JSON.parse(vm.out) as { id: string }).id;
    const route = bash(`${lines[1]!.replace("<id>", id)} -w '\\n%{http_code}'`, product);
    expect(route.out.trim().split("\n").at(-1), route.out).toBe("201");
    const call = bash(lines[2]!, product);
    expect(JSON.parse(call.out)).toMatchObject({ vm_id: id, path: "/" });
  }, 90_000);
});
