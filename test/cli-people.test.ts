import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PEOPLE_USAGE, runPeopleCommand } from "../src/cli/people.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { serveRouteApi } from "./helpers/fakes.ts";

const KEY = "cli-test-key-7f3a9";
const PREFIX = "127.0.93";
type Env = Record<string, string | undefined>;

let sim: Simulator;
let simUrl: string;
let api: Awaited<ReturnType<typeof serveRouteApi>> | undefined;
let apiUrl: string;
let closedUrl: string;
let tmp: string;
/** Every output of every run, to check the API key is never printed. */
const transcript: string[] = [];

const listen = (server: Server) =>
  new Promise<string>((resolve) => server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
const close = (server: Server) => new Promise<void>((resolve) => server.close(() => resolve()));

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "hatch-cli-"));
  sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: 20 });
  simUrl = (await sim.listen({ host: "127.0.0.1", port: 0 })).url;
  api = await serveRouteApi(sim.platform, [KEY]);
  apiUrl = api.url;
  // A port that was just free: nothing listens there.
  const probe = createServer();
  closedUrl = await listen(probe);
  await close(probe);
});

afterAll(async () => {
  await api?.close();
  await sim?.close();
  rmSync(tmp, { recursive: true, force: true });
  for (const text of transcript) expect(text).not.toContain(KEY);
});

const baseEnv = (): Env => ({ HATCH_PROXY_URL: apiUrl, HATCH_PROXY_API_KEY: KEY, HATCH_API_URL: simUrl });

async function run(argv: string[], env: Env = baseEnv(), fetchImpl?: typeof fetch) {
  let out = "";
  let err = "";
  const code = await runPeopleCommand(argv, env, { out: (s) => (out += s), err: (s) => (err += s), ...(fetchImpl && { fetch: fetchImpl }) });
  transcript.push(out, err);
  return { code, out, err };
}

const raw = async (url: string) => (await fetch(url, { headers: { authorization: `Bearer ${KEY}` } })).text();

/** Header and rows as people see them, written out by hand: two spaces between padded columns. */
const vmTable = (vm: { id: string; state: string; ip: string; ports: string; wakes: string }) => {
  const w = [Math.max(2, vm.id.length), Math.max(5, vm.state.length), Math.max(8, vm.ip.length), Math.max(5, vm.ports.length)];
  return (
    `${"ID".padEnd(w[0]!)}  ${"STATE".padEnd(w[1]!)}  ${"GUEST IP".padEnd(w[2]!)}  ${"PORTS".padEnd(w[3]!)}  WAKES\n` +
    `${vm.id.padEnd(w[0]!)}  ${vm.state.padEnd(w[1]!)}  ${vm.ip.padEnd(w[2]!)}  ${vm.ports.padEnd(w[3]!)}  ${vm.wakes}\n`
  );
};

describe("vms commands against the simulator", () => {
  let vmId: string;
  let ip: string;

  it("vms create prints the new VM as a table", async () => {
    const r = await run(["vms", "create", "--port", "8080", "--port", "3000", "--restore-ms", "20"]);
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const vms = sim.listVms();
    expect(vms).toHaveLength(1);
    vmId = vms[0]!.id;
    ip = vms[0]!.guest_ip!;
    expect(ip.startsWith(`${PREFIX}.`)).toBe(true);
    expect(vms[0]!.guest_ports).toEqual([8080, 3000]);
    expect(vms[0]!.restore_ms).toBe(20);
    expect(r.out).toBe(vmTable({ id: vmId, state: "running", ip, ports: "8080,3000", wakes: "0" }));
  });

  it("--json prints the API's answer as is; list and get show the VM", async () => {
    const get = await run(["vms", "get", vmId, "--json"]);
    expect(get).toEqual({ code: 0, out: `${await raw(`${simUrl}/vms/${vmId}`)}\n`, err: "" });
    const list = await run(["vms", "list", "--json"]);
    expect(list).toEqual({ code: 0, out: `${await raw(`${simUrl}/vms`)}\n`, err: "" });
    expect(await run(["vms", "list"])).toEqual({ code: 0, out: vmTable({ id: vmId, state: "running", ip, ports: "8080,3000", wakes: "0" }), err: "" });
  });

  it("snapshot, restore, stop and start change the VM and print its new state", async () => {
    expect(await run(["vms", "snapshot", vmId])).toEqual({ code: 0, out: vmTable({ id: vmId, state: "snapshotted", ip, ports: "8080,3000", wakes: "0" }), err: "" });
    expect(sim.getVm(vmId)!.state).toBe("snapshotted");
    expect(await run(["vms", "restore", vmId])).toEqual({ code: 0, out: vmTable({ id: vmId, state: "running", ip, ports: "8080,3000", wakes: "1" }), err: "" });
    expect(await run(["vms", "stop", vmId])).toEqual({ code: 0, out: vmTable({ id: vmId, state: "stopped", ip, ports: "8080,3000", wakes: "1" }), err: "" });
    expect(await run(["vms", "start", vmId])).toEqual({ code: 0, out: vmTable({ id: vmId, state: "running", ip, ports: "8080,3000", wakes: "2" }), err: "" });
    const snap = await run(["vms", "snapshot", vmId, "--json"]);
    expect(snap.code).toBe(0);
    expect(JSON.parse(snap.out)).toEqual({ id: expect.stringMatching(/^snap_/), vm_id: vmId, created_at: expect.any(String) });
    expect(sim.getVm(vmId)!.state).toBe("snapshotted");
    await run(["vms", "restore", vmId]);
  });

  it("a refused transition exits 1 with the platform's text (Hatch's 500)", async () => {
    expect(await run(["vms", "restore", vmId])).toEqual({
      code: 1,
      out: "",
      err: "error: vm must be snapshotted to restore (current state: running) (HTTP 500)\n",
    });
    expect(await run(["vms", "get", "vm_nope"])).toEqual({ code: 1, out: "", err: "error: not found (HTTP 404)\n" });
    expect(await run(["vms", "create", "--port", "70000"])).toEqual({
      code: 1,
      out: "",
      err: "error: guest_ports must be 1 to 16 distinct integers between 1 and 65535 (HTTP 400)\n",
    });
  });

  it("finds the simulator from HATCH_SIM_ADDR, and --vm-api-url wins over HATCH_API_URL", async () => {
    const port = new URL(simUrl).port;
    expect((await run(["vms", "get", vmId], { HATCH_SIM_ADDR: `127.0.0.1:${port}` })).code).toBe(0);
    expect((await run(["vms", "get", vmId], { HATCH_API_URL: closedUrl })).code).toBe(1);
    expect((await run(["vms", "get", vmId, "--vm-api-url", simUrl], { HATCH_API_URL: closedUrl })).code).toBe(0);
  });

  it("says when the VM API cannot be reached", async () => {
    expect(await run(["vms", "list"], { HATCH_API_URL: closedUrl })).toEqual({
      code: 1,
      out: "",
      err: `error: cannot reach the VM API at ${closedUrl}: is the simulator running? (npm start, or hatch-proxy sim)\n`,
    });
  });

  describe("routes commands against the real route API", () => {
    let routeId: string;
    let created: string;
    let routeTable: (rows: { id: string; sub: string; wake: string; created: string }[]) => string;

    beforeAll(() => {
      routeTable = (rows) => {
        const w = [Math.max(2, ...rows.map((r) => r.id.length)), Math.max(2, vmId.length), Math.max(9, ...rows.map((r) => r.sub.length)), 4, 9];
        const line = (cells: string[]) => cells.map((c, i) => (i < 5 ? c.padEnd(w[i]!) : c)).join("  ") + "\n";
        return line(["ID", "VM", "SUBDOMAIN", "PORT", "AUTO-WAKE", "CREATED"]) + rows.map((r) => line([r.id, vmId, r.sub, "8080", r.wake, r.created])).join("");
      };
    });

    it("routes create prints the route as a table", async () => {
      const r = await run(["routes", "create", vmId, "--port", "8080", "--subdomain", "cli-app"]);
      expect(r.err).toBe("");
      expect(r.code).toBe(0);
      const routes = JSON.parse(await raw(`${apiUrl}/vms/${vmId}/routes`));
      expect(routes).toHaveLength(1);
      expect(routes[0]).toMatchObject({ vm_id: vmId, subdomain: "cli-app", target_port: 8080, auto_wake: true });
      routeId = routes[0].id;
      created = routes[0].created_at;
      expect(r.out).toBe(routeTable([{ id: routeId, sub: "cli-app", wake: "yes", created }]));
    });

    it("--no-auto-wake without --subdomain gets a generated subdomain; --json prints the answer as is", async () => {
      const r = await run(["routes", "create", vmId, "--port", "8080", "--no-auto-wake", "--json"]);
      expect(r.code).toBe(0);
      const body = JSON.parse(r.out);
      expect(body).toMatchObject({ vm_id: vmId, target_port: 8080, auto_wake: false, subdomain: expect.stringMatching(/^[a-z0-9]{12}$/) });
      expect(r.out).toBe(`${await raw(`${apiUrl}/routes/${body.id}`)}\n`);
    });

    it("routes list prints the API's order as a table, and --json as is", async () => {
      const api = JSON.parse(await raw(`${apiUrl}/vms/${vmId}/routes`)) as { id: string; subdomain: string; auto_wake: boolean; created_at: string }[];
      expect(api).toHaveLength(2);
      const r = await run(["routes", "list", vmId]);
      expect(r).toEqual({
        code: 0,
        out: routeTable(api.map((x) => ({ id: x.id, sub: x.subdomain, wake: x.auto_wake ? "yes" : "no", created: x.created_at }))),
        err: "",
      });
      expect(await run(["routes", "list", vmId, "--json"])).toEqual({ code: 0, out: `${await raw(`${apiUrl}/vms/${vmId}/routes`)}\n`, err: "" });
      expect(await run(["routes", "get", routeId])).toEqual({ code: 0, out: routeTable([{ id: routeId, sub: "cli-app", wake: "yes", created }]), err: "" });
    });

    it("API errors exit 1 with the API's text and status", async () => {
      const cases: [string[], string][] = [
        [["routes", "create", vmId, "--port", "70000"], "error: target_port must be between 1 and 65535 (HTTP 400)\n"],
        [["routes", "create", vmId, "--port", "80", "--subdomain", "cli-app"], 'error: subdomain "cli-app" is already in use (HTTP 409)\n'],
        [["routes", "create", vmId, "--port", "80", "--subdomain", "api"], 'error: subdomain "api" is reserved (HTTP 400)\n'],
        [["routes", "create", vmId, "--port", "80", "--subdomain", "Bad_Name"], "error: subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars) (HTTP 400)\n"],
        [["routes", "create", "vm_ghost", "--port", "80"], "error: not found (HTTP 404)\n"],
        [["routes", "list", "vm_ghost"], "error: not found (HTTP 404)\n"],
        [["routes", "delete", "rt_doesnotexist00"], "error: not found (HTTP 404)\n"],
      ];
      for (const [argv, err] of cases) expect(await run(argv), argv.join(" ")).toEqual({ code: 1, out: "", err });
    });

    it("a wrong or missing key is a 401 with a hint, and the key is never printed", async () => {
      const hint = "hint: pass --api-key or set HATCH_PROXY_API_KEY (npm start prints its key and keeps it in <HATCH_DATA_DIR, default data>/api-key)\n";
      const wrong = await run(["routes", "list", vmId], { HATCH_PROXY_URL: apiUrl, HATCH_PROXY_API_KEY: "wrong-secret-123" });
      expect(wrong).toEqual({ code: 1, out: "", err: `error: invalid api key (HTTP 401)\nhint: the key came from HATCH_PROXY_API_KEY\n${hint}` });
      const empty = mkdtempSync(join(tmp, "nokey-"));
      const missing = await run(["routes", "list", vmId], { HATCH_PROXY_URL: apiUrl, HATCH_DATA_DIR: empty });
      expect(missing).toEqual({ code: 1, out: "", err: `error: missing api key (HTTP 401)\nhint: no key given, and no key file at ${join(empty, "api-key")}\n${hint}` });
      for (const text of transcript) expect(text).not.toContain("wrong-secret-123");
    });

    it("finds a local npm start: HATCH_HTTP_ADDR and the key file in HATCH_DATA_DIR", async () => {
      const dir = mkdtempSync(join(tmp, "data-"));
      writeFileSync(join(dir, "api-key"), `${KEY}\n`);
      const port = new URL(apiUrl).port;
      expect((await run(["routes", "get", routeId], { HATCH_HTTP_ADDR: `:${port}`, HATCH_DATA_DIR: dir })).code).toBe(0);
      // Without the address, the default :8080 is somebody else (or nothing): not our API.
      expect((await run(["routes", "get", routeId], { HATCH_HTTP_ADDR: `:${new URL(closedUrl).port}`, HATCH_DATA_DIR: dir })).code).toBe(1);
    });

    it("uses the first plain key of HATCH_API_KEYS, and flags win over the environment", async () => {
      const digest = `sha256:${createHash("sha256").update("other").digest("hex")}`;
      expect((await run(["routes", "get", routeId], { HATCH_PROXY_URL: apiUrl, HATCH_API_KEYS: `${digest}, ${KEY}` })).code).toBe(0);
      const wrongEnv = { HATCH_PROXY_URL: closedUrl, HATCH_PROXY_API_KEY: "nope" };
      expect((await run(["routes", "get", routeId], wrongEnv)).code).toBe(1);
      expect((await run(["routes", "get", routeId, "--api-url", apiUrl, "--api-key", KEY], wrongEnv)).code).toBe(0);
    });

    it("routes delete deletes, then the route is gone", async () => {
      expect(await run(["routes", "delete", routeId])).toEqual({ code: 0, out: `deleted route ${routeId}\n`, err: "" });
      expect(await run(["routes", "get", routeId])).toEqual({ code: 1, out: "", err: "error: not found (HTTP 404)\n" });
      const others = JSON.parse(await raw(`${apiUrl}/vms/${vmId}/routes`)) as { id: string }[];
      for (const r of others) expect(await run(["routes", "delete", r.id, "--json"])).toEqual({ code: 0, out: '{"status":"deleted"}\n', err: "" });
      expect(await run(["routes", "list", vmId])).toEqual({ code: 0, out: `no routes for ${vmId}\n`, err: "" });
      expect(await run(["routes", "list", vmId, "--json"])).toEqual({ code: 0, out: "[]\n", err: "" });
    });

    it("vms delete deletes the VM", async () => {
      expect(await run(["vms", "delete", vmId])).toEqual({ code: 0, out: `deleted vm ${vmId}\n`, err: "" });
      expect(sim.getVm(vmId)).toBeUndefined();
      expect(await run(["vms", "list"])).toEqual({ code: 0, out: "no VMs\n", err: "" });
    });
  });
});

describe("failures that are not API errors", () => {
  it("says when the route API cannot be reached", async () => {
    expect(await run(["routes", "list", "vm_x"], { HATCH_PROXY_URL: closedUrl, HATCH_PROXY_API_KEY: KEY })).toEqual({
      code: 1,
      out: "",
      err: `error: cannot reach the route API at ${closedUrl}: is hatch-proxy running? (npm start)\n`,
    });
  });

  it("says when the answer is not the route API's", async () => {
    const html = createServer((_req, res) => res.writeHead(502, { "content-type": "text/html" }).end("<h1>Bad Gateway</h1>"));
    const url = await listen(html);
    try {
      expect(await run(["routes", "list", "vm_x", "--api-url", url])).toEqual({
        code: 1,
        out: "",
        err: `error: the route API at ${url} answered HTTP 502 without an error message: is it really the route API?\n`,
      });
    } finally {
      await close(html);
    }
  });
});

describe("usage", () => {
  const noFetch = (() => {
    throw new Error("a usage error must not send a request");
  }) as unknown as typeof fetch;
  const createUsage = "usage: hatch-proxy routes create <vm> --port <port> [--subdomain <name>] [--no-auto-wake]\n(hatch-proxy routes create --help for the options)\n";
  const listUsage = "usage: hatch-proxy routes list <vm>\n(hatch-proxy routes list --help for the options)\n";

  const cases: [string, string[], string][] = [
    ["no command", [], `error: missing command\n\n${PEOPLE_USAGE}\n`],
    ["an unknown command", ["nodes"], `error: unknown command "nodes"\n\n${PEOPLE_USAGE}\n`],
    ["--port missing", ["routes", "create", "vm_x"], `error: routes create: --port is required\n\n${createUsage}`],
    ["--port not a number", ["routes", "create", "vm_x", "--port", "http"], `error: routes create: --port must be a whole number, not "http"\n\n${createUsage}`],
    ["--port without a value", ["routes", "create", "vm_x", "--port"], `error: routes create: --port needs a value\n\n${createUsage}`],
    ["a missing positional", ["routes", "list"], `error: routes list: missing <vm>\n\n${listUsage}`],
    ["an extra positional", ["routes", "list", "a", "b"], `error: routes list: unexpected argument "b"\n\n${listUsage}`],
    ["an unknown option", ["routes", "list", "a", "--bogus"], `error: routes list: unknown option --bogus\n\n${listUsage}`],
    ["a value that looks like an option", ["routes", "create", "vm_x", "--port", "80", "--subdomain", "-x"], `error: routes create: --subdomain needs a value (for one starting with "-", write --subdomain=<value>)\n\n${createUsage}`],
    ["a value for a flag", ["routes", "list", "a", "--json=yes"], `error: routes list: --json takes no value\n\n${listUsage}`],
    ["a bad --api-url", ["routes", "list", "a", "--api-url", "ftp://x"], `error: --api-url="ftp://x": expected an http:// or https:// URL\n\n${listUsage}`],
    ["a bad --action", ["vms", "sleep", "vm_x", "--action", "pause"], 'error: vms sleep: --action must be "snapshot" or "stop", not "pause"\n\nusage: hatch-proxy vms sleep <vm> [--action snapshot|stop]\n(hatch-proxy vms sleep --help for the options)\n'],
    ["a bad --restore-ms", ["vms", "create", "--restore-ms", "1s"], 'error: vms create: --restore-ms must be a whole number of milliseconds, not "1s"\n\nusage: hatch-proxy vms create [--port <port>]... [--restore-ms <ms>]\n(hatch-proxy vms create --help for the options)\n'],
  ];
  it.each(cases)("%s exits 2 with the usage on stderr and sends nothing", async (_name, argv, err) => {
    expect(await run(argv, baseEnv(), noFetch)).toEqual({ code: 2, out: "", err });
  });

  it("a missing or unknown subcommand shows the group's commands", async () => {
    const r = await run(["routes", "frobnicate"], baseEnv(), noFetch);
    expect(r.code).toBe(2);
    expect(r.err.split("\n").slice(0, 3)).toEqual(['error: unknown routes command "frobnicate"', "", expect.stringMatching(/^Routes \(/)]);
    expect(r.err).toContain("  hatch-proxy routes delete <route>\n");
    const vms = await run(["vms"], baseEnv(), noFetch);
    expect(vms.code).toBe(2);
    expect(vms.err).toMatch(/^error: missing vms command\n\nVMs \(/);
    expect(vms.err).toContain("  hatch-proxy vms snapshot <vm>\n");
  });

  it("--help prints help on stdout and exits 0, wherever it is", async () => {
    const group = await run(["vms", "--help"], baseEnv(), noFetch);
    expect(group.code).toBe(0);
    expect(group.err).toBe("");
    expect(group.out.split("\n").filter((l) => l.startsWith("  hatch-proxy vms ")).map((l) => l.split(" ")[4])).toEqual([
      "create", "list", "get", "snapshot", "restore", "stop", "start", "delete", "sleep", "activity",
    ]);
    const sub = await run(["routes", "create", "vm_x", "--port", "nonsense", "-h"], baseEnv(), noFetch);
    expect(sub.code).toBe(0);
    expect(sub.err).toBe("");
    expect(sub.out).toMatch(/^usage: hatch-proxy routes create <vm> --port <port> \[--subdomain <name>\] \[--no-auto-wake\]\n/);
    for (const option of ["--port <value>", "--subdomain <value>", "--no-auto-wake", "--api-url <value>", "--api-key <value>", "--json", "--help"]) {
      expect(sub.out).toContain(`  ${option} `);
    }
  });

  it("PEOPLE_USAGE lists every subcommand", () => {
    const lines = PEOPLE_USAGE.split("\n").filter((l) => l.startsWith("  hatch-proxy "));
    expect(lines.map((l) => l.split(" ").slice(3, 5).join(" "))).toEqual([
      "routes create", "routes list", "routes get", "routes delete",
      "vms create", "vms list", "vms get", "vms snapshot", "vms restore", "vms stop", "vms start", "vms delete", "vms sleep", "vms activity",
    ]);
  });
});
