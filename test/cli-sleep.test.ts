/**
 * `hatch-proxy vms sleep` and `hatch-proxy vms activity` run in-process (runPeopleCommand) against a
 * real stack: route API with the sleep protocol, the simulator in-process, the embedded proxy.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rmSync } from "node:fs";
import { request, type ClientRequest } from "node:http";
import { join } from "node:path";
import { runPeopleCommand } from "../src/cli/people.ts";
import { activityLines, humanDuration, type ActivityJson } from "../src/cli/sleep-command.ts";
import { testConfig } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { addEmbeddedProxy, startStack, type Stack } from "../src/stack.ts";
import { freePort } from "./helpers/env.ts";
import { seededDataDir } from "./helpers/pglite-template.ts";

const KEY = "cli-sleep-key-5e1b";
const PREFIX = "127.0.62";
const HOUR = 3_600_000;
type Env = Record<string, string | undefined>;

let stack: Stack;
let dir: string;
let apiUrl: string;
/** Nothing listens there: the VM API must not be needed by sleep and activity. */
let closedUrl: string;

beforeAll(async () => {
  dir = seededDataDir("hatch-cli-sleep-");
  const config = testConfig({
    httpAddr: { host: "127.0.0.1", port: 0 },
    proxyAddr: { host: "127.0.0.1", port: 0 },
    simAddr: { host: "127.0.0.1", port: 0 },
    dataDir: dir,
    apiKeys: [KEY],
    simIpPrefix: PREFIX,
    simRestoreMs: 0,
    // Long enough that the sweeper never acts during the test, so sleeps_at has a time to show.
    idleTimeoutMs: HOUR,
  });
  stack = await startStack(config, silentLogger, { api: true, simulator: true, sleeperOptions: { minDrainMs: 50, pollMs: 20 } });
  await addEmbeddedProxy(stack);
  apiUrl = stack.api!.url;
  closedUrl = `http://127.0.0.1:${await freePort()}`;
}, 30_000);

afterAll(async () => {
  await stack?.close();
  rmSync(dir, { recursive: true, force: true });
});

const baseEnv = (): Env => ({ HATCH_PROXY_URL: apiUrl, HATCH_PROXY_API_KEY: KEY, HATCH_API_URL: closedUrl });

async function run(argv: string[], env: Env = baseEnv(), fetchImpl?: typeof fetch) {
  let out = "";
  let err = "";
  const code = await runPeopleCommand(argv, env, { out: (s) => (out += s), err: (s) => (err += s), ...(fetchImpl && { fetch: fetchImpl }) });
  return { code, out, err };
}

const rawActivity = async (vmId: string) => (await fetch(`${apiUrl}/vms/${vmId}/activity`, { headers: { authorization: `Bearer ${KEY}` } })).text();

/** `vms activity` output as a key → value map (checks the alignment on the way). */
function parseActivity(out: string): Record<string, string> {
  const lines = out.replace(/\n$/, "").split("\n");
  expect(lines.map((l) => l.slice(0, 19))).toEqual(
    ["vm", "state", "last activity", "idle since", "open connections", "idle timeout", "sleeps at", "sleep in progress"].map((k) => `${k.padEnd(17)}  `),
  );
  return Object.fromEntries(lines.map((l) => [l.slice(0, 17).trimEnd(), l.slice(19)]));
}

/** A request through the embedded proxy, as a browser at <sub>.hatch.local sends it. */
function viaProxy(sub: string, path: string): { req: ClientRequest; head: Promise<number> } {
  let req!: ClientRequest;
  const head = new Promise<number>((resolve, reject) => {
    req = request(`${stack.proxy!.url}${path}`, { headers: { host: `${sub}.hatch.local` } }, (res) => resolve(res.statusCode!));
    req.on("error", reject);
    req.end();
  });
  return { req, head };
}
const getViaProxy = async (sub: string, path = "/") => {
  const { req, head } = viaProxy(sub, path);
  const status = await head;
  req.destroy();
  return status;
};

const SECONDS_ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;
const past = (value: string) => {
  const m = /^(\S+) \((just now|(\d+s) ago)\)$/.exec(value);
  expect(m, value).not.toBeNull();
  expect(m![1]).toMatch(SECONDS_ISO);
  return m![1]!;
};

describe("vms activity and vms sleep against the full stack", () => {
  let vmId: string;
  let ip: string;

  beforeAll(async () => {
    const vm = await stack.simulator!.createVm();
    vmId = vm.id;
    ip = vm.guest_ip!;
  });

  it("activity of a VM without routes: never active, nothing to sleep", async () => {
    const r = await run(["vms", "activity", vmId]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    expect(parseActivity(r.out)).toEqual({
      vm: vmId,
      state: "running",
      "last activity": "never",
      "idle since": "- (no routes)",
      "open connections": "0",
      "idle timeout": "1h",
      "sleeps at": "- (no routes)",
      "sleep in progress": "-",
    });
  });

  it("with a route and no request yet: never active, idle since the route, sleeps an hour later", async () => {
    expect((await run(["routes", "create", vmId, "--port", "8080", "--subdomain", "sleepy"])).code).toBe(0);
    const a = parseActivity((await run(["vms", "activity", vmId])).out);
    expect(a["last activity"]).toBe("never");
    const since = past(a["idle since"]!);
    const m = /^(\S+) \(in (59m( \d+s)?|1h)\)$/.exec(a["sleeps at"]!);
    expect(m, a["sleeps at"]).not.toBeNull();
    expect(Date.parse(m![1]!) - Date.parse(since)).toBe(HOUR);
  });

  it("after a request through the embedded proxy: the last activity is that request", async () => {
    const before = Date.now();
    expect(await getViaProxy("sleepy")).toBe(200);
    const r = await run(["vms", "activity", vmId]);
    expect(r.code).toBe(0);
    const a = parseActivity(r.out);
    const last = past(a["last activity"]!);
    expect(Date.parse(last)).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
    expect(Date.parse(last)).toBeLessThanOrEqual(Date.now());
    expect(a["open connections"]).toBe("0");
    expect(a["sleeps at"]).toMatch(/ \(in (59m( \d+s)?|1h)\)$/);
    // --json is the API's answer as is, and the table shows its time to the second.
    const json = await run(["vms", "activity", vmId, "--json"]);
    expect(json.code).toBe(0);
    const body = JSON.parse(json.out) as ActivityJson;
    expect(body).toMatchObject({ vm_id: vmId, state: "running", open_connections: 0, idle_timeout_s: 3600, sleep: null });
    expect(body.last_activity_at!.replace(/\.\d{3}Z$/, "Z")).toBe(last);
  });

  it("an open connection shows, and is why no sleep is due", async () => {
    const stream = viaProxy("sleepy", "/events?ms=0");
    try {
      expect(await stream.head).toBe(200);
      const a = parseActivity((await run(["vms", "activity", vmId])).out);
      expect(a["open connections"]).toBe("1");
      expect(a["sleeps at"]).toBe("- (1 connection open)");
    } finally {
      stream.req.destroy();
    }
    // The proxy sees the client leave; the next flush says so.
    const deadline = Date.now() + 3000;
    let open = "1";
    while (open !== "0" && Date.now() < deadline) {
      open = parseActivity((await run(["vms", "activity", vmId])).out)["open connections"]!;
      if (open !== "0") await new Promise((r) => setTimeout(r, 50));
    }
    expect(open).toBe("0");
  });

  it("vms sleep puts it to sleep through the route API and prints the sleeping VM", async () => {
    const r = await run(["vms", "sleep", vmId]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    expect(stack.simulator!.getVm(vmId)!.state).toBe("snapshotted");
    const w = [Math.max(2, vmId.length), 11, Math.max(8, ip.length), 5];
    expect(r.out).toBe(
      `${"ID".padEnd(w[0]!)}  ${"STATE".padEnd(w[1]!)}  ${"GUEST IP".padEnd(w[2]!)}  ${"PORTS".padEnd(w[3]!)}  WAKES\n` +
        `${vmId.padEnd(w[0]!)}  ${"snapshotted".padEnd(w[1]!)}  ${ip.padEnd(w[2]!)}  ${"8080".padEnd(w[3]!)}  0\n`,
    );
    const a = parseActivity((await run(["vms", "activity", vmId])).out);
    expect(a.state).toBe("snapshotted");
    expect(a["sleeps at"]).toBe("- (not running)");
  });

  it("a second sleep exits 1 with the API's 409 text", async () => {
    expect(await run(["vms", "sleep", vmId])).toEqual({ code: 1, out: "", err: "error: vm is not running (current state: snapshotted) (HTTP 409)\n" });
  });

  it("activity --json prints the API's answer as is", async () => {
    const r = await run(["vms", "activity", vmId, "--json"]);
    expect(r).toEqual({ code: 0, out: `${await rawActivity(vmId)}\n`, err: "" });
    expect(JSON.parse(r.out)).toEqual({
      vm_id: vmId,
      state: "snapshotted",
      last_activity_at: expect.stringMatching(/Z$/),
      idle_since: expect.stringMatching(/Z$/),
      open_connections: 0,
      idle_timeout_s: 3600,
      sleeps_at: null,
      sleep: null,
      sleep_blocked: null,
      platform_access: { status: "ok", detail: null },
    });
  });

  it("a request wakes it again; --action stop stops it, and --json prints the VM as the API answers", async () => {
    expect(await getViaProxy("sleepy")).toBe(200);
    expect(stack.simulator!.getVm(vmId)!.state).toBe("running");
    const r = await run(["vms", "sleep", vmId, "--action", "stop", "--json"]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ id: vmId, state: "stopped", wake_count: 1 });
    expect(stack.simulator!.getVm(vmId)!.state).toBe("stopped");
  });

  it("errors come from the route API: unknown VM, wrong key", async () => {
    expect(await run(["vms", "activity", "vm_ghost"])).toEqual({ code: 1, out: "", err: "error: not found (HTTP 404)\n" });
    expect(await run(["vms", "sleep", "vm_ghost"])).toEqual({ code: 1, out: "", err: "error: not found (HTTP 404)\n" });
    const hint = "hint: the key came from HATCH_PROXY_API_KEY\nhint: pass --api-key or set HATCH_PROXY_API_KEY (npm start prints its key and keeps it in <HATCH_DATA_DIR, default data>/api-key)\n";
    expect(await run(["vms", "activity", vmId], { ...baseEnv(), HATCH_PROXY_API_KEY: "wrong" })).toEqual({ code: 1, out: "", err: `error: invalid api key (HTTP 401)\n${hint}` });
    // --api-url wins over HATCH_PROXY_URL, as for routes.
    expect((await run(["vms", "activity", vmId, "--api-url", apiUrl], { ...baseEnv(), HATCH_PROXY_URL: closedUrl })).code).toBe(0);
    expect(await run(["vms", "activity", vmId], { ...baseEnv(), HATCH_PROXY_URL: closedUrl })).toEqual({
      code: 1,
      out: "",
      err: `error: cannot reach the route API at ${closedUrl}: is hatch-proxy running? (npm start)\n`,
    });
  });
});

describe("usage of vms sleep and vms activity", () => {
  const noFetch = (() => {
    throw new Error("a usage error must not send a request");
  }) as unknown as typeof fetch;
  const sleepUsage = "usage: hatch-proxy vms sleep <vm> [--action snapshot|stop]\n(hatch-proxy vms sleep --help for the options)\n";

  it.each([
    ["a bad --action", ["vms", "sleep", "vm_x", "--action", "hibernate"], `error: vms sleep: --action must be "snapshot" or "stop", not "hibernate"\n\n${sleepUsage}`],
    ["an empty --action", ["vms", "sleep", "vm_x", "--action="], `error: vms sleep: --action must be "snapshot" or "stop", not ""\n\n${sleepUsage}`],
    ["--action without a value", ["vms", "sleep", "vm_x", "--action"], `error: vms sleep: --action needs a value\n\n${sleepUsage}`],
    ["a VM API flag (they go to the route API)", ["vms", "sleep", "vm_x", "--vm-api-url", "http://x"], `error: vms sleep: unknown option --vm-api-url\n\n${sleepUsage}`],
    ["a missing <vm>", ["vms", "activity"], "error: vms activity: missing <vm>\n\nusage: hatch-proxy vms activity <vm>\n(hatch-proxy vms activity --help for the options)\n"],
  ])("%s exits 2 with the usage and sends nothing", async (_name, argv, err) => {
    expect(await run(argv as string[], baseEnv(), noFetch)).toEqual({ code: 2, out: "", err });
  });

  it("--help shows the route API's flags, not the VM API's", async () => {
    const r = await run(["vms", "sleep", "--help"], baseEnv(), noFetch);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^usage: hatch-proxy vms sleep <vm> \[--action snapshot\|stop\]\n/);
    for (const option of ["--action <value>", "--api-url <value>", "--api-key <value>", "--json", "--help"]) expect(r.out).toContain(`  ${option} `);
    expect(r.out).not.toContain("--vm-api-url");
    const group = await run(["vms", "--help"], baseEnv(), noFetch);
    expect(group.out).toContain("  hatch-proxy vms sleep <vm> [--action snapshot|stop]  (route API)\n");
    expect(group.out).toContain("  hatch-proxy vms activity <vm>                        (route API)\n");
    expect(group.out).toContain("  hatch-proxy vms snapshot <vm>\n");
  });
});

describe("activity for people", () => {
  const now = Date.parse("2025-03-01T12:00:00.000Z");
  const base: ActivityJson = {
    vm_id: "vm_a",
    state: "running",
    last_activity_at: "2025-03-01T11:59:48.400Z",
    idle_since: "2025-03-01T11:59:48.400Z",
    open_connections: 0,
    idle_timeout_s: 600,
    sleeps_at: "2025-03-01T12:09:48.400Z",
    sleep: null,
  };
  const lines = (over: Partial<ActivityJson>) => Object.fromEntries(activityLines({ ...base, ...over }, now).map((l) => [l.slice(0, 17).trimEnd(), l.slice(19)]));

  it("aligns the keys and shows times to the second with how long ago or until", () => {
    expect(activityLines(base, now)).toEqual([
      "vm                 vm_a",
      "state              running",
      "last activity      2025-03-01T11:59:48Z (12s ago)",
      "idle since         2025-03-01T11:59:48Z (12s ago)",
      "open connections   0",
      "idle timeout       10m",
      "sleeps at          2025-03-01T12:09:48Z (in 9m 48s)",
      "sleep in progress  -",
    ]);
  });

  it("says why there is no time to sleep when the answer tells", () => {
    expect(lines({ idle_timeout_s: 0, sleeps_at: null })).toMatchObject({ "idle timeout": "off", "sleeps at": "- (idle sleep is off)" });
    expect(lines({ state: "snapshotted", sleeps_at: null })["sleeps at"]).toBe("- (not running)");
    expect(lines({ open_connections: 3, sleeps_at: null })["sleeps at"]).toBe("- (3 connections open)");
    expect(lines({ idle_since: null, last_activity_at: null, sleeps_at: null })).toMatchObject({ "last activity": "never", "idle since": "- (no routes)", "sleeps at": "- (no routes)" });
    const draining = lines({ sleeps_at: null, sleep: { phase: "draining", reason: "idle", started_at: "2025-03-01T11:59:57.000Z" } });
    expect(draining).toMatchObject({ "sleeps at": "- (a sleep is under way)", "sleep in progress": "draining (reason: idle) since 2025-03-01T11:59:57Z (3s ago)" });
    // A VM hatch-proxy cannot act on says so, and why it will not be put to sleep.
    const dark = lines({ sleeps_at: null, platform_access: { status: "no_credential", detail: "hatch-proxy holds no key for this vm: …" } });
    expect(dark).toMatchObject({ "sleeps at": "- (hatch-proxy cannot act on it: see platform access)", "platform access": "no_credential: hatch-proxy holds no key for this vm: …" });
    expect(lines({ platform_access: { status: "ok", detail: null } })).not.toHaveProperty("platform access");
  });

  it("a sleep that is due says so, and a last activity this very second is just now", () => {
    expect(lines({ sleeps_at: "2025-03-01T12:00:00.000Z" })["sleeps at"]).toBe("2025-03-01T12:00:00Z (due now)");
    expect(lines({ last_activity_at: "2025-03-01T11:59:59.700Z" })["last activity"]).toBe("2025-03-01T11:59:59Z (just now)");
  });

  it("humanDuration keeps the two largest units", () => {
    expect([250, 1000, 12_400, 59_600, 60_000, 90_000, 3_599_000, 3_600_000, 3_900_000, 3_605_000, 90_000_000].map(humanDuration)).toEqual([
      "250ms", "1s", "12s", "1m", "1m", "1m 30s", "59m 59s", "1h", "1h 5m", "1h", "1d 1h",
    ]);
  });
});
