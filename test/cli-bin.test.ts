/**
 * The people commands as people run them: `hatch-proxy …` (bin/hatch-proxy.js → main.ts →
 * runPeopleCommand) in a directory where `npm start` left its key, with exit codes and streams
 * as the shell sees them.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { runCli } from "./helpers/cli.ts";
import { serveRouteApi } from "./helpers/fakes.ts";

const KEY = "bin-test-key-41c2";

let sim: Simulator;
let simAddr: string;
let api: Awaited<ReturnType<typeof serveRouteApi>> | undefined;
let apiPort: number;
let cwd: string;

beforeAll(async () => {
  sim = await createSimulator({ ipPrefix: "127.0.94", restoreMs: 0 });
  simAddr = new URL((await sim.listen({ host: "127.0.0.1", port: 0 })).url).host;
  api = await serveRouteApi(sim.platform, [KEY]);
  apiPort = api.port;
  // What `npm start` leaves in its directory: data/api-key, one line.
  cwd = mkdtempSync(join(tmpdir(), "hatch-cli-bin-"));
  mkdirSync(join(cwd, "data"));
  writeFileSync(join(cwd, "data", "api-key"), `${KEY}\n`);
});

afterAll(async () => {
  await api?.close();
  await sim?.close();
  rmSync(cwd, { recursive: true, force: true });
});

/** Runs the CLI in the test's directory, told where the route API and the simulator listen. */
const cli = (args: string[], env: Record<string, string> = {}) =>
  runCli(args, { cwd, env: { HATCH_HTTP_ADDR: `127.0.0.1:${apiPort}`, HATCH_SIM_ADDR: simAddr, ...env } });

describe("hatch-proxy routes/vms through bin/hatch-proxy.js", { timeout: 60_000 }, () => {
  let vmId: string;

  it("creates a VM and a route with the local defaults and the key file, and exits 0", async () => {
    const vm = await cli(["vms", "create", "--json"]);
    expect(vm.err).toBe("");
    expect(vm.code).toBe(0);
    vmId = JSON.parse(vm.out).id;
    expect(sim.getVm(vmId)?.state).toBe("running");

    const route = await cli(["routes", "create", vmId, "--port", "8080", "--subdomain", "binapp"]);
    expect(route.err).toBe("");
    expect(route.code).toBe(0);
    const lines = route.out.split("\n");
    expect(lines[0]).toMatch(/^ID {19}VM +SUBDOMAIN  PORT  AUTO-WAKE  CREATED$/);
    expect(lines[1]).toMatch(new RegExp(`^rt_[a-z0-9]{16}  ${vmId} +binapp {5}8080  yes {8}\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$`));
    expect(lines.slice(2)).toEqual([""]);
  });

  it("exits 1 with the API's text on stderr, and 2 with the usage for a bad command line", async () => {
    expect(await cli(["routes", "list", "vm_ghost"])).toEqual({ code: 1, out: "", err: "error: not found (HTTP 404)\n" });
    const usage = await cli(["routes", "create", vmId]);
    expect(usage.code).toBe(2);
    expect(usage.out).toBe("");
    expect(usage.err).toMatch(/^error: routes create: --port is required\n\nusage: hatch-proxy routes create <vm>/);
  });

  it("--help lists vms sleep and vms activity, marked as going to the route API", async () => {
    const help = await cli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.out).toContain("  hatch-proxy vms sleep <vm> [--action snapshot|stop]  (route API)\n");
    expect(help.out).toContain("  hatch-proxy vms activity <vm>                        (route API)\n");
  });

  it("exits 1 with a hint when nothing listens", async () => {
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
    const url = `http://127.0.0.1:${(probe.address() as AddressInfo).port}`;
    await new Promise<void>((r) => probe.close(() => r()));
    const r = await cli(["routes", "list", vmId], { HATCH_PROXY_URL: url });
    expect(r).toEqual({ code: 1, out: "", err: `error: cannot reach the route API at ${url}: is hatch-proxy running? (npm start)\n` });
  });
});
