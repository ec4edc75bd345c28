/**
 * The simulator's bridge guest network behaves like Hatch's network, not like the kind loopback
 * one: a paused VM is a black hole, a snapshotted VM fails after ARP (never refused), a restored
 * VM answers at once while connections from before are dead, and nothing is left behind. The
 * scenario runs in a fresh network namespace of its own (test/fixtures/sim-bridge-scenario.ts);
 * this file asserts on the one JSON line it prints.
 */
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { Subnet, GuestAddressPool } from "../src/vms/simulator/network/subnet.ts";
import { bridgeNameError, guestMac } from "../src/vms/simulator/network/links.ts";
import { lastJsonLine, netnsEnabled, runInFreshNetns, type ConnectOutcome } from "./helpers/netns.ts";

const SCENARIO = fileURLToPath(new URL("./fixtures/sim-bridge-scenario.ts", import.meta.url));

describe("bridge network: subnet and names (no namespace needed)", () => {
  it("hands out guest addresses lowest first, between the bridge and broadcast addresses", () => {
    const subnet = new Subnet("10.213.0.0/29");
    expect(subnet.gateway).toBe("10.213.0.1");
    const pool = new GuestAddressPool(subnet);
    expect([1, 2, 3, 4, 5].map(() => pool.allocate())).toEqual(["10.213.0.2", "10.213.0.3", "10.213.0.4", "10.213.0.5", "10.213.0.6"]);
    expect(() => pool.allocate()).toThrow("no free guest address left in 10.213.0.0/29");
    pool.release("10.213.0.4");
    expect(pool.claim("10.213.0.4")).toBe(true);
    expect(pool.claim("10.213.0.4")).toBe(false);
    expect(() => pool.claim("10.213.0.1")).toThrow("10.213.0.1 is not a guest address of 10.213.0.0/29 (10.213.0.2–10.213.0.6)");
    expect(() => pool.claim("10.213.0.7")).toThrow("not a guest address");
  });

  it("refuses subnets it cannot serve, saying why", () => {
    expect(() => new Subnet("10.213.0.5/24")).toThrow('bridge subnet "10.213.0.5/24" has host bits set; the network is 10.213.0.0/24');
    for (const bad of ["10.213.0.0", "10.213.0.0/8", "10.213.0.0/30", "10.213.256.0/24", "10.213.0.0/24/1", "010.213.0.0/24"]) {
      expect(() => new Subnet(bad), bad).toThrow("bridge subnet must be an IPv4 network a.b.c.d/len with len 16–29");
    }
    expect(new Subnet("172.16.0.0/16").overlaps("172.16.200.1", 24)).toBe(true);
    expect(new Subnet("10.213.0.0/24").overlaps("127.0.0.1", 8)).toBe(false);
  });

  it("derives interface names that cannot collide, and the guest MAC the simulator reports", () => {
    expect(bridgeNameError("hsbr0")).toBeUndefined();
    for (const bad of ["hsbr", "hsbr0a", "hsbr0v1", "HSBR0", "toolongname0"]) expect(bridgeNameError(bad), bad).toMatch(/bridge name must be/);
    expect(guestMac("10.213.0.2")).toBe("06:00:0a:d5:00:02");
  });
});

const enabled = netnsEnabled();

interface ScenarioResults {
  error?: string;
  refusal: { refused: boolean; message?: string; linksWhileRefused: string[] };
  pool: { first: string; second: string; afterRelease: string; claimHeld: boolean; claimFree: boolean };
  linksAttached: string[];
  hostIfs: { vm1: string; vm2: string };
  up: { status?: number; body?: { boot: number; port: number } }[];
  keepAliveFirst: boolean;
  paused: { short: ConnectOutcome; long: ConnectOutcome; keepAliveAnswered: boolean; keepAliveEnded: string | null; state: string };
  neighbourWhilePaused: { status?: number; body?: { boot: number } };
  neighbourWhileUnlinked: { status?: number; body?: { boot: number } };
  detached: { described: unknown; helperAlive: boolean; links: string[] };
  helperAliveAfterUnlink: boolean;
  linksUnlinked: string[];
  unlinked: ConnectOutcome[];
  relinkMs: number;
  restoreToFirstAnswerMs: number;
  relinked: { first: { status?: number; body?: { boot: number } }; other: { status?: number; body?: { boot: number; port: number } }; state: string };
  frozenKeepAlive: { answered: boolean; ended: { how: string; code?: string; msAfterRelink: number } | null };
  receivedDuringSleep: string[];
  childrenBeforeClose: { pid: number; cmd: string }[];
  secondClose: string;
  afterClose: { children: { pid: number; cmd: string }[]; helperAlive: boolean; links: string[] };
  attachAfterClose?: string;
  afterSigkill: { helperAlive: boolean; helperExitMs: number; leftLinks: string[]; refusal?: string; linksAfterCleanup: string[] };
}

/** Children other than tsx's esbuild service (started by the scenario's TypeScript loader, not by the network). */
const ownChildren = (list: { cmd: string }[]) => list.filter((c) => !/esbuild/.test(c.cmd));

describe.skipIf(!enabled)("bridge network in a fresh network namespace (Hatch's snapshot and restore)", () => {
  let r: ScenarioResults;

  beforeAll(async () => {
    const run = await runInFreshNetns(SCENARIO, 90_000);
    r = lastJsonLine<ScenarioResults>(run);
    if (r.error) throw new Error(`scenario failed: ${r.error}\nstderr:\n${run.stderr}`);
    // The figures, for whoever reads the test log.
    console.log(`[bridge network] paused connect: ${r.paused.long.outcome} at ${r.paused.long.ms} ms; unlinked: ${r.unlinked.map((u) => `${u.code} after ${u.ms} ms`).join(", ")}; relink ${r.relinkMs} ms, restore to first answer ${r.restoreToFirstAnswerMs} ms; frozen keep-alive: ${r.frozenKeepAlive.ended?.code} ${r.frozenKeepAlive.ended?.msAfterRelink} ms after relink`);
  }, 120_000);

  it("refuses a namespace that has an interface it did not make, and makes nothing", () => {
    expect(r.refusal.refused).toBe(true);
    expect(r.refusal.message).toContain("refusing to build the bridge network on 10.213.0.0/24: this network namespace holds interfaces other than lo (dummy1, dummy0)");
    expect(r.refusal.linksWhileRefused.sort()).toEqual(["dummy0", "dummy1", "lo"]);
  });

  it("hands out .2 first, reuses a released address, and claims only free ones", () => {
    expect(r.pool).toEqual({ first: "10.213.0.2", second: "10.213.0.3", afterRelease: "10.213.0.3", claimHeld: false, claimFree: true });
  });

  it("(a) serves every guest port through the handed-over listeners", () => {
    // Two VMs attached at once get one host end each.
    expect(r.linksAttached.sort()).toEqual(["hsbr0", "hsbr0a", "hsbr0b", "hsbr0v0", "hsbr0v1", "lo"]);
    expect([r.hostIfs.vm1, r.hostIfs.vm2].sort()).toEqual(["hsbr0v0", "hsbr0v1"]);
    expect(r.up.map((u) => [u.status, u.body?.boot, u.body?.port])).toEqual([
      [200, 1, 8080],
      [200, 1, 9090],
    ]);
    expect(r.keepAliveFirst).toBe(true);
  });

  it("(b) paused: a new connect hangs past the client's timeout (never refused, never an ARP failure) and an open connection gets no answer", () => {
    expect(r.paused.state).toBe("paused");
    expect(r.paused.short.outcome).toBe("timeout");
    expect(r.paused.short.ms).toBeGreaterThanOrEqual(1000);
    // 5 s is past ARP's ~3 s: a hang this long cannot be "no route to host" cut short.
    expect(r.paused.long).toMatchObject({ outcome: "timeout" });
    expect(r.paused.long.ms).toBeGreaterThanOrEqual(4900);
    expect(r.paused.keepAliveAnswered).toBe(false);
    expect(r.paused.keepAliveEnded).toBeNull();
    expect(r.neighbourWhilePaused).toMatchObject({ status: 200 });
  });

  it("(c) unlinked: every connect fails with EHOSTUNREACH after ARP, not ECONNREFUSED; the link and helper are gone", () => {
    expect(r.linksUnlinked.sort()).toEqual(["hsbr0", "hsbr0a", "hsbr0b", r.hostIfs.vm2, "lo"].sort());
    expect(r.helperAliveAfterUnlink).toBe(false);
    expect(r.neighbourWhileUnlinked).toMatchObject({ status: 200 });
    expect(r.unlinked).toHaveLength(2);
    for (const u of r.unlinked) {
      expect(u.outcome).toBe("error");
      expect(["EHOSTUNREACH", "ETIMEDOUT"]).toContain(u.code);
      expect(u.ms).toBeGreaterThanOrEqual(2000);
    }
  });

  it("detach removes a VM's link and helper and forgets it; a second detach is a no-op", () => {
    expect(r.detached).toEqual({ described: null, helperAlive: false, links: expect.arrayContaining(["hsbr0", "lo"]) });
    expect(r.detached.links).not.toContain(r.hostIfs.vm2);
  });

  it("(d) relinked: answers again on every port from the new boot; the frozen connection is reset, never answered", () => {
    expect(r.relinked.state).toBe("linked");
    expect(r.relinked.first).toMatchObject({ status: 200, body: { boot: 2 } });
    expect(r.relinked.other).toMatchObject({ status: 200, body: { boot: 2, port: 9090 } });
    expect(r.restoreToFirstAnswerMs).toBeLessThan(5000);
    expect(r.frozenKeepAlive.answered).toBe(false);
    expect(r.frozenKeepAlive.ended).toMatchObject({ how: "error", code: "ECONNRESET" });
    // The boot-1 servers stayed open through the sleep: still nothing reached them.
    expect(r.receivedDuringSleep).toEqual([]);
  });

  it("(f) close leaves only lo and no helper process; a second close is harmless and the network refuses further work", () => {
    // The linked VM's helper, and one started ahead for the next restore (so a restore does not wait for a Node start-up).
    expect(ownChildren(r.childrenBeforeClose)).toHaveLength(2);
    expect(r.afterClose.links).toEqual(["lo"]);
    expect(ownChildren(r.afterClose.children)).toEqual([]);
    expect(r.afterClose.helperAlive).toBe(false);
    expect(r.secondClose).toBe("ok");
    expect(r.attachAfterClose).toBe("bridge network hsbr0 is closed");
  });

  it("after SIGKILL: the helper exits with its channel and its veth goes; the bridge stays, and the next network names it and how to remove it", () => {
    expect(r.afterSigkill.helperAlive).toBe(false);
    expect(r.afterSigkill.leftLinks.sort()).toEqual(["hsbr0", "hsbr0a", "hsbr0b", "lo"]);
    expect(r.afterSigkill.refusal).toMatch(/hsbr0, hsbr0a were left by a simulator that is no longer running \(pid \d+\); remove them with: ip link del hsbr0; ip link del hsbr0a/);
    expect(r.afterSigkill.linksAfterCleanup).toEqual(["lo"]);
  });
});
