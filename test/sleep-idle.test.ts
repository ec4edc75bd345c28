/**
 * The idle sweeper's own rules on the embedded front: an SSH session keeps a VM up (as in Hatch's
 * monitor), a VM woken by someone else starts a fresh idle clock, HATCH_IDLE_ACTION=stop stops.
 */
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { establishedPorts } from "../src/lifecycle/ssh-sessions.ts";
import type { Stack } from "../src/stack.ts";
import { addRouteVia, api, stackConfig, stackDatabase, stackPorts, standaloneSimulator, startSleepStack } from "./helpers/stack.ts";
import { waitFor } from "./helpers/wait.ts";

const conntrackLine = (dport: number, state = "ESTABLISHED") =>
  `ipv4     2 tcp      6 431999 ${state} src=10.0.0.9 dst=10.0.0.1 sport=51000 dport=${dport} src=172.16.0.2 dst=10.0.0.9 sport=22 dport=51000 [ASSURED] mark=0 zone=0 use=2`;

describe("ssh sessions in a conntrack table", () => {
  it("lists destination ports of established connections only", () => {
    const text = [conntrackLine(20001), conntrackLine(20002, "TIME_WAIT"), "udp      17 29 src=1.1.1.1 dst=2.2.2.2 sport=53 dport=5353", ""].join("\n");
    expect(establishedPorts(text)).toEqual(new Set([20001, 51000]));
  });
});

describe("idle sweeper rules (embedded, pglite)", () => {
  let simulator: Awaited<ReturnType<typeof standaloneSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  let stack: Stack;
  let dir: string;
  const conntrack = () => join(dir, "nf_conntrack");
  const sim = () => simulator.sim;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "hatch-conntrack-"));
    writeFileSync(conntrack(), "");
    simulator = await standaloneSimulator("127.0.74", 100);
    db = await stackDatabase("pglite");
    const config = stackConfig(await stackPorts(), {
      ...db.overrides,
      hatchApiUrl: simulator.url,
      idleTimeoutMs: 1200,
      idleCheckIntervalMs: 300,
      idleAction: "stop",
      idleSshConntrack: conntrack(),
    });
    stack = await startSleepStack(config, "embedded");
  });
  afterAll(async () => {
    await stack?.close();
    await simulator?.close();
    await db?.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("keeps a VM with an SSH session up, and stops it (HATCH_IDLE_ACTION=stop) once the session ends", async () => {
    const vm = await sim().createVm();
    writeFileSync(conntrack(), conntrackLine(vm.ssh_port!) + "\n");
    await addRouteVia(stack, vm.id, "ssh-user");
    await new Promise((r) => setTimeout(r, 3000));
    expect(sim().getVm(vm.id)!.state).toBe("running");
    writeFileSync(conntrack(), conntrackLine(vm.ssh_port!, "TIME_WAIT") + "\n");
    await waitFor(() => sim().getVm(vm.id)!.state === "stopped", "the VM to be stopped", 5000);
  });

  it("a VM woken outside hatch-proxy starts a fresh idle clock", async () => {
    const vm = await sim().createVm();
    await addRouteVia(stack, vm.id, "woken-elsewhere");
    await waitFor(() => sim().getVm(vm.id)!.state === "stopped", "the idle VM to be stopped", 5000);
    // Hours idle by its last activity; started by hand, it must get a whole timeout again.
    await sim().start(vm.id);
    const started = Date.now();
    await waitFor(() => sim().getVm(vm.id)!.state === "stopped", "the VM to be stopped again", 6000);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1200 - 100);
  });

  it("reading the config by hand (curl, a browser, a script) pauses no sleep: only a Traefik's poll does", async () => {
    for (const ua of ["curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36", undefined]) {
      const res = await fetch(`${stack.api!.url}/traefik/config`, { headers: ua ? { "user-agent": ua } : {} });
      expect(res.status).toBe(200);
    }
    expect(stack.sleeper!.unconfirmable()).toBeUndefined();
    const vm = await sim().createVm();
    await addRouteVia(stack, vm.id, "read-by-hand");
    const r = await api(stack, "POST", `/vms/${vm.id}/sleep`);
    expect([r.status, r.json.state]).toEqual([200, "stopped"]);
  });

  it("refuses to sleep anything while a Traefik polls the config but HATCH_TRAEFIK_API_URLS is unset (its direct traffic would be cut)", async () => {
    // Last in this file: the refusal lasts a minute after the last poll. Traefik's HTTP provider
    // sends Go's default User-Agent.
    expect((await fetch(`${stack.api!.url}/traefik/config`, { headers: { "user-agent": "Go-http-client/1.1" } })).status).toBe(200);
    const vm = await sim().createVm();
    await addRouteVia(stack, vm.id, "unconfirmable");
    await new Promise((r) => setTimeout(r, 2500));
    expect(sim().getVm(vm.id)!.state).toBe("running");
    const r = await api(stack, "POST", `/vms/${vm.id}/sleep`);
    expect(r.status).toBe(503);
    expect(r.json).toMatchObject({ code: "sleep_unconfirmable", error: expect.stringMatching(/^cannot put the vm to sleep safely: a Traefik polls this API's \/traefik\/config but HATCH_TRAEFIK_API_URLS is unset/) });
    expect(sim().getVm(vm.id)!.state).toBe("running");
  });
});
