/**
 * The CLI for scripts and for people trying it: with --json every error is one JSON object on
 * stderr, with the same exit codes as without; and the key `npm start` generated is found from any
 * directory of the project, or the CLI says where it looked.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runPeopleCommand } from "../src/cli/people.ts";
import { keyFileCandidates, PROJECT_ROOT, routeApiTarget } from "../src/cli/targets.ts";
import { createSimulator, type Simulator } from "../src/vms/simulator/index.ts";
import { serveRouteApi } from "./helpers/fakes.ts";
import { REPO } from "./helpers/front.ts";

const KEY = "front-cli-key-81d2";
let sim: Simulator;
let simUrl: string;
let api: Awaited<ReturnType<typeof serveRouteApi>>;
let closedUrl: string;
let tmp: string;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "hatch-front-cli-"));
  sim = await createSimulator({ ipPrefix: "127.0.148", restoreMs: 20 });
  simUrl = (await sim.listen({ host: "127.0.0.1", port: 0 })).url;
  api = await serveRouteApi(sim.platform, [KEY]);
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
  closedUrl = `http://127.0.0.1:${(probe.address() as AddressInfo).port}`;
  await new Promise((r) => probe.close(r));
});

afterAll(async () => {
  await api?.close();
  await sim?.close();
  rmSync(tmp, { recursive: true, force: true });
});

type Env = Record<string, string | undefined>;
const env = (): Env => ({ HATCH_PROXY_URL: api.url, HATCH_PROXY_API_KEY: KEY, HATCH_API_URL: simUrl });

async function run(argv: string[], e: Env = env()) {
  let out = "";
  let err = "";
  const code = await runPeopleCommand(argv, e, { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

describe("--json errors", () => {
  it("are one JSON object on stderr, with the exit code of the same error without --json", async () => {
    const vm = await sim.createVm();
    const cases: [string, string[], Env, object][] = [
      ["a 404 from the route API", ["routes", "get", "rt_doesnotexist00"], env(), { error: "not found", status: 404, hint: "check the id: hatch-proxy routes list <vm> lists a VM's routes, hatch-proxy vms list the VMs" }],
      ["a 404 from the VM API", ["vms", "get", "vm_ghost"], env(), { error: "not found", status: 404, hint: expect.stringMatching(/^check the id/) }],
      ["a 400 naming the field", ["routes", "create", vm.id, "--port", "8080", "--subdomain", "Bad_Name"], env(), { status: 400, hint: "the route API refused the request as sent: the error says what to change" }],
      ["a wrong key", ["routes", "list", vm.id], { ...env(), HATCH_PROXY_API_KEY: "wrong" }, { error: "invalid api key", status: 401, hint: expect.stringContaining("the key came from HATCH_PROXY_API_KEY") }],
      [
        "nothing listening",
        ["routes", "list", vm.id],
        { ...env(), HATCH_PROXY_URL: closedUrl },
        { error: `cannot reach the route API at ${closedUrl}: is hatch-proxy running? (npm start)`, hint: "check that the route API runs and is reachable at the URL in the error (hatch-proxy routes list --help shows the options that point at it)" },
      ],
      ["a missing argument", ["routes", "get"], env(), { error: "routes get: missing <route>", hint: "hatch-proxy routes get --help shows its arguments and options" }],
      ["an unknown option", ["routes", "list", vm.id, "--bogus"], env(), { error: "routes list: unknown option --bogus", hint: "hatch-proxy routes list --help shows its arguments and options" }],
      ["an unknown subcommand", ["vms", "explode"], env(), { error: 'unknown vms command "explode"', hint: "hatch-proxy vms --help lists its commands" }],
      ["an unknown command", ["volumes", "list"], env(), { error: 'unknown command "volumes"', hint: "hatch-proxy help lists the commands" }],
    ];
    for (const [what, argv, e, expected] of cases) {
      const text = await run(argv, e);
      const json = await run([...argv, "--json"], e);
      expect(text.code, what).not.toBe(0);
      expect(json.code, what).toBe(text.code);
      expect(json.out, what).toBe("");
      expect(json.err.endsWith("\n") && json.err.trim().split("\n"), what).toHaveLength(1);
      const parsed = JSON.parse(json.err);
      expect(parsed, what).toMatchObject(expected);
      expect(typeof parsed.error, what).toBe("string");
      // The README promises {"error", "status", "hint"}: a hint on every one, a status with every HTTP answer.
      expect(typeof parsed.hint, what).toBe("string");
      expect(JSON.stringify(parsed), what).not.toContain(KEY);
    }
  });

  it("come out of the real command the same way", () => {
    const r = spawnSync(process.execPath, [join(REPO, "bin/hatch-proxy.js"), "routes", "get", "rt_x", "--json", "--api-url", closedUrl], { encoding: "utf8", timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(JSON.parse(r.stderr)).toEqual({
      error: `cannot reach the route API at ${closedUrl}: is hatch-proxy running? (npm start)`,
      hint: "check that the route API runs and is reachable at the URL in the error (hatch-proxy routes get --help shows the options that point at it)",
    });
  });
});

describe("the key npm start generated", () => {
  it("is found from a subdirectory of the project (npm start keeps it in the project's data/)", () => {
    const project = join(tmp, "project");
    mkdirSync(join(project, "data"), { recursive: true });
    mkdirSync(join(project, "src"), { recursive: true });
    writeFileSync(join(project, "data", "api-key"), `${KEY}\n`);
    const places = { cwd: join(project, "src"), projectRoot: project };
    expect(keyFileCandidates({}, places)).toEqual([join(project, "src/data/api-key"), join(project, "data/api-key")]);
    const target = routeApiTarget({}, {}, places);
    expect(target.key).toBe(KEY);
    expect(target.authHint.split("\n")[0]).toBe(`hint: the key came from ${join(project, "data/api-key")}`);
    // HATCH_DATA_DIR as npm start read it: absolute, or relative to where it ran.
    expect(keyFileCandidates({ HATCH_DATA_DIR: "/srv/hatch" }, places)).toEqual(["/srv/hatch/api-key"]);
    expect(keyFileCandidates({ HATCH_DATA_DIR: "state" }, places)).toEqual([join(project, "src/state/api-key"), join(project, "state/api-key")]);
  });

  it("when missing, the 401 says every file it looked at", async () => {
    const nowhere = join(tmp, "nowhere");
    const target = routeApiTarget({}, {}, { cwd: nowhere, projectRoot: join(tmp, "elsewhere") });
    expect(target.key).toBeUndefined();
    expect(target.authHint.split("\n")[0]).toBe(`hint: no key given, and no key file at ${join(nowhere, "data/api-key")} or ${join(tmp, "elsewhere/data/api-key")}`);
    const r = await run(["routes", "list", "vm_x", "--json"], { HATCH_PROXY_URL: api.url, HATCH_DATA_DIR: join(tmp, "empty") });
    expect(r.code).toBe(1);
    expect(JSON.parse(r.err)).toMatchObject({ error: "missing api key", status: 401, hint: expect.stringContaining(`no key file at ${join(tmp, "empty", "api-key")}`) });
  });

  it("the project root is this repository", () => {
    expect(PROJECT_ROOT.replace(/\/$/, "")).toBe(REPO.replace(/\/$/, ""));
  });
});
