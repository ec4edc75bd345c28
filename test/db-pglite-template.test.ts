/**
 * The embedded database's first start from the build's template: the streaming tar extraction
 * (what it writes, in which order, what it refuses) and a PGlite opened on the copy.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { migratePglite } from "../src/db/client.ts";
import { createPglite, PGLITE_SETTINGS } from "../src/db/pglite.ts";
import { extractTarGz } from "../src/db/tar.ts";

const dirs: string[] = [];
const scratch = (prefix: string) => {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A .tgz of `src`'s contents made by the system's tar (not by the code under test). */
function tarOf(src: string, extra: string[] = []): string {
  const file = join(scratch("hatch-tgz-"), "t.tgz");
  execFileSync("tar", ["czf", file, "-C", src, ...extra, "."]);
  return file;
}

describe("extractTarGz", () => {
  it("recreates nested directories and files byte for byte, large ones included, with their modes", async () => {
    const src = scratch("hatch-tar-src-");
    mkdirSync(join(src, "base/1"), { recursive: true });
    mkdirSync(join(src, "empty"));
    const big = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
    big.write("start", 0);
    big.write("end", big.length - 3);
    writeFileSync(join(src, "base/1/big"), big);
    writeFileSync(join(src, "PG_VERSION"), "17\n");
    writeFileSync(join(src, "zero"), "");
    writeFileSync(join(src, "secret"), "x", { mode: 0o600 });
    const dest = scratch("hatch-tar-dest-");
    await extractTarGz(tarOf(src), dest, ["PG_VERSION"]);
    expect(readFileSync(join(dest, "base/1/big")).equals(big)).toBe(true);
    expect(readFileSync(join(dest, "PG_VERSION"), "utf8")).toBe("17\n");
    expect(readFileSync(join(dest, "zero"), "utf8")).toBe("");
    expect(statSync(join(dest, "secret")).mode & 0o777).toBe(0o600);
    expect(statSync(join(dest, "empty")).isDirectory()).toBe(true);
  });

  it("writes the files named last after every other, so an interrupted copy has no PG_VERSION", async () => {
    const src = scratch("hatch-tar-src-");
    writeFileSync(join(src, "PG_VERSION"), "17\n");
    writeFileSync(join(src, "later"), randomBytes(1024 * 1024));
    // PG_VERSION first in the archive, then a large file the archive is cut in the middle of.
    const whole = join(scratch("hatch-tgz-"), "t.tgz");
    execFileSync("tar", ["czf", whole, "-C", src, "PG_VERSION", "later"]);
    const bytes = readFileSync(whole);
    const cut = join(scratch("hatch-tgz-"), "cut.tgz");
    writeFileSync(cut, bytes.subarray(0, Math.floor(bytes.length / 2)));
    const dest = scratch("hatch-tar-dest-");
    await expect(extractTarGz(cut, dest, ["PG_VERSION"])).rejects.toThrow();
    expect(existsSync(join(dest, "later"))).toBe(true);
    expect(existsSync(join(dest, "PG_VERSION"))).toBe(false);
    await extractTarGz(whole, dest, ["PG_VERSION"]);
    expect(readFileSync(join(dest, "PG_VERSION"), "utf8")).toBe("17\n");
  });

  it("refuses entries it cannot write faithfully, and paths that leave the target", async () => {
    const src = scratch("hatch-tar-src-");
    symlinkSync("/etc/passwd", join(src, "link"));
    await expect(extractTarGz(tarOf(src), scratch("hatch-tar-dest-"))).rejects.toThrow(/"\.\/link" has type "2": only files and directories are supported/);
    const up = scratch("hatch-tar-src-");
    writeFileSync(join(up, "f"), "z");
    const escaping = tarOf(up, ["--transform=s,^\\./f,../escaped,"]);
    const dest = scratch("hatch-tar-dest-");
    await expect(extractTarGz(escaping, dest)).rejects.toThrow(/leaves the target directory/);
    expect(existsSync(join(dest, "..", "escaped"))).toBe(false);
  });
});

describe("a first start from a template", { timeout: 60_000 }, () => {
  it("opens the copy as a migrated database with hatch-proxy's settings, and leaves an existing one as it is", async () => {
    const template = process.env.HATCH_TEST_PGLITE_TEMPLATE;
    if (!template) throw new Error("no PGlite template: run through vitest's global setup");
    const tgz = tarOf(template, ["--exclude=./hatch-proxy.pid"]);
    const dir = join(scratch("hatch-first-start-"), "pglite");
    mkdirSync(dir);
    const pg = await createPglite(dir, tgz);
    try {
      expect((await pg.query("show shared_buffers")).rows).toEqual([{ shared_buffers: PGLITE_SETTINGS[1]!.split("=")[1] }]);
      await migratePglite(pg);
      expect((await pg.query<{ n: number }>("select count(*)::int as n from routes")).rows).toEqual([{ n: 0 }]);
      await pg.query("insert into routes (id, vm_id, subdomain, target_port) values ('rt-kept', 'vm-kept', 'kept', 8080)");
    } finally {
      await pg.close();
    }
    const again = await createPglite(dir, tgz);
    try {
      expect((await again.query<{ id: string }>("select id from routes")).rows).toEqual([{ id: "rt-kept" }]);
    } finally {
      await again.close();
    }
  });
});
