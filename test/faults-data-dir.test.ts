/**
 * Issue 10, items 7 and 8: the data directory's lock names a live process that can have written it,
 * or it is taken over (our own pid from an earlier life, a pid reused by a younger process, a dead
 * pid, garbage); and a second start on a directory in use stops before touching anything in it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { testConfig } from "../src/config.ts";
import { DataDirInUseError, openDatabase } from "../src/db/client.ts";
import { lockDirectory } from "../src/db/data-dir-lock.ts";
import { silentLogger } from "../src/log.ts";
import { startStack } from "../src/stack.ts";
import { BIN, startSimulator } from "./helpers/front.ts";
import { call } from "./helpers/wake-fixture.ts";

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "hatch-faults-dir-"));
  dirs.push(d);
  return d;
};

/** A live process that is not hatch-proxy (and started now). */
async function stranger(): Promise<number> {
  const child = spawn("sleep", ["60"], { stdio: "ignore" });
  children.push(child);
  await new Promise((r) => child.once("spawn", r));
  return child.pid!;
}

describe("the data directory lock", () => {
  const CASES: [string, () => Promise<string>][] = [
    ["this very pid, left by an earlier life of it (a container's PID 1 after a restart)", async () => String(process.pid)],
    ["a pid now used by a process that started after the lock was written", async () => String(await stranger())],
    ["a pid that no longer runs", async () => "4194305"],
    ["no pid at all", async () => "not a pid"],
    ["an empty file", async () => ""],
  ];

  /** A lock file holding `content`, written a minute ago (before any process this test starts). */
  async function staleLock(content: () => Promise<string>): Promise<{ dir: string; file: string }> {
    const dir = tempDir();
    const file = join(dir, "hatch-proxy.pid");
    writeFileSync(file, `${await content()}\n`);
    const past = new Date(Date.now() - 60_000);
    utimesSync(file, past, past);
    return { dir, file };
  }

  it.each(CASES)("takes over a lock holding %s", async (_what, content) => {
    const { dir, file } = await staleLock(content);
    const release = lockDirectory(dir);
    expect(readFileSync(file, "utf8").trim()).toBe(String(process.pid));
    release();
    expect(existsSync(file)).toBe(false);
  });

  it("the embedded database opens over a lock holding its own pid (the repro: it failed forever)", async () => {
    const { dir, file } = await staleLock(CASES[0]![1]);
    const db = await openDatabase({ dataDir: dir });
    expect(readFileSync(file, "utf8").trim()).toBe(String(process.pid));
    await db.close();
  });

  it("refuses a lock held by a live process that started before it was written, and one this process holds", async () => {
    const dir = tempDir();
    const file = join(dir, "hatch-proxy.pid");
    const pid = await stranger();
    await new Promise((r) => setTimeout(r, 20));
    writeFileSync(file, `${pid}\n`);
    expect(() => lockDirectory(dir)).toThrow(DataDirInUseError);
    expect(() => lockDirectory(dir)).toThrow(`is in use by process ${pid}`);
    expect(readFileSync(file, "utf8").trim()).toBe(String(pid));
    rmSync(file);
    const release = lockDirectory(dir, "the data directory");
    expect(() => lockDirectory(dir, "the data directory")).toThrow(`the data directory is in use by process ${process.pid}`);
    release();
  });
});

/** Every file in the directory (pid files aside) and its hash. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name !== "hatch-proxy.pid") out[p.slice(dir.length)] = createHash("sha256").update(readFileSync(p)).digest("hex");
    }
  };
  walk(dir);
  return out;
}

describe("a second start on a data directory in use", () => {
  it("stops before the simulator or the database touch it: the first keeps its VMs and files", async () => {
    const dataDir = tempDir();
    const config = testConfig({ dataDir, databaseUrl: undefined, simIpPrefix: "127.78.8", simAddr: { host: "127.0.0.1", port: 0 }, simRestoreMs: 50 });
    const first = await startStack(config, silentLogger, { simulator: true });
    try {
      const vm = await first.simulator!.createVm();
      const before = snapshot(dataDir);
      expect(Object.keys(before)).toContain("/simulator.json");

      const second = await startStack(config, silentLogger, { simulator: true }).then(
        async (s) => {
          await s.close();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(snapshot(dataDir)).toEqual(before);
      expect(JSON.parse(readFileSync(join(dataDir, "simulator.json"), "utf8")).vms.map((v: { state: string }) => v.state)).toEqual(["running"]);
      const echo = await call(`http://${vm.guest_ip}:8080`, { host: "x" });
      expect(echo.json().vm_id).toBe(vm.id);
      expect(second).toBeInstanceOf(DataDirInUseError);
      expect((second as Error).message).toMatch(new RegExp(`^the data directory ${dataDir} is in use by process ${process.pid}`));
    } finally {
      await first.close();
    }
    // Released at close.
    expect(existsSync(join(dataDir, "hatch-proxy.pid"))).toBe(false);
  });

  it("holds for `hatch-proxy sim` too: a second simulator, or a start, on its directory stops first", async () => {
    const dir = tempDir();
    const dataDir = join(dir, "sim-data");
    const sim = await startSimulator("127.78.9", dir, dataDir);
    try {
      const created = await fetch(`${sim.url}/vms`, { method: "POST" });
      const vm = (await created.json()) as { id: string; guest_ip: string };
      expect(created.status).toBe(201);
      const before = snapshot(dataDir);
      expect(Object.keys(before)).toContain("/simulator.json");
      expect(readFileSync(join(dataDir, "hatch-proxy.pid"), "utf8").trim()).toBe(String(sim.child.pid));

      // Another `hatch-proxy sim` on the same directory (another port), then an embedded start.
      const second = spawn(process.execPath, [BIN, "sim"], {
        env: { ...process.env, HATCH_SIM_ADDR: "127.0.0.1:0", HATCH_SIM_IP_PREFIX: "127.78.9", HATCH_DATA_DIR: dataDir },
        stdio: ["ignore", "pipe", "pipe"],
      });
      children.push(second);
      let out = "";
      second.stdout!.on("data", (c) => (out += c));
      second.stderr!.on("data", (c) => (out += c));
      const code = await new Promise<number | null>((r) => second.once("exit", (c) => r(c)));
      expect(code, out).not.toBe(0);
      expect(out).toContain(`the data directory ${dataDir} is in use by process ${sim.child.pid}`);
      const start = await startStack(testConfig({ dataDir, databaseUrl: undefined, simIpPrefix: "127.78.9", simAddr: { host: "127.0.0.1", port: 0 } }), silentLogger, { simulator: true }).then(
        async (s) => {
          await s.close();
          return undefined;
        },
        (e: unknown) => e,
      );
      expect(start).toBeInstanceOf(DataDirInUseError);

      expect(snapshot(dataDir)).toEqual(before);
      const echo = await call(`http://${vm.guest_ip}:8080`, { host: "x" });
      expect(echo.json().vm_id).toBe(vm.id);
    } finally {
      await sim.stop();
    }
    expect(existsSync(join(dataDir, "hatch-proxy.pid"))).toBe(false);
  }, 60_000);
});
