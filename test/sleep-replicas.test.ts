/**
 * Two replicas of the route API + sidecar on one Postgres database and one VM platform: one idle
 * sweeper acts at a time, a VM is put to sleep once however many replicas try, and woken once
 * however many sidecars receive its requests.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Stack } from "../src/stack.ts";
import { dbKinds } from "./helpers/db.ts";
import { call } from "./helpers/wake-fixture.ts";
import { addRouteVia, api, stackConfig, stackDatabase, stackPorts, standaloneSimulator, startSleepStack } from "./helpers/stack.ts";
import { waitFor } from "./helpers/wait.ts";

const hasPostgres = (await dbKinds()).includes("postgres");
const SECRET = "replica-secret";

describe.skipIf(!hasPostgres)("two replicas on one Postgres", () => {
  let simulator: Awaited<ReturnType<typeof standaloneSimulator>>;
  let db: Awaited<ReturnType<typeof stackDatabase>>;
  const stacks: Stack[] = [];
  const sim = () => simulator.sim;

  const metric = async (stack: Stack, pattern: RegExp) => {
    const text = await (await fetch(`${stack.api!.url}/metrics`)).text();
    return Number(pattern.exec(text)?.[1] ?? NaN);
  };
  const idleDone = (s: Stack) => metric(s, /hatch_sleeps_total\{reason="idle",outcome="done"\} (\d+)/);

  beforeAll(async () => {
    simulator = await standaloneSimulator("127.0.73", 150);
    db = await stackDatabase("postgres");
    for (let i = 0; i < 2; i++) {
      const config = stackConfig(await stackPorts(), {
        ...db.overrides,
        hatchApiUrl: simulator.url,
        wakeSecret: SECRET,
        idleTimeoutMs: 1500,
        idleCheckIntervalMs: 300,
      });
      stacks.push(await startSleepStack(config, "traefik"));
    }
  });
  afterAll(async () => {
    for (const s of stacks) await s.close();
    await simulator?.close();
    await db?.drop();
  });

  it("one sweeper at a time: five idle VMs are each put to sleep exactly once", async () => {
    await waitFor(() => stacks.some((s) => s.sweeper!.isLeader), "a sweeper to take the lease");
    expect(stacks.filter((s) => s.sweeper!.isLeader)).toHaveLength(1);
    const vms = await Promise.all(Array.from({ length: 5 }, () => sim().createVm()));
    for (const [i, vm] of vms.entries()) await addRouteVia(stacks[i % 2]!, vm.id, `idle-replica-${i}`);
    for (const vm of vms) await waitFor(() => sim().getVm(vm.id)!.state === "snapshotted", `${vm.id} to sleep`, 15_000);
    // Give a second sweeper every chance to sleep one again (it would fail: not running), then count.
    await new Promise((r) => setTimeout(r, 1500));
    for (const vm of vms) expect(sim().snapshots(vm.id)).toHaveLength(1);
    const done = (await idleDone(stacks[0]!)) + (await idleDone(stacks[1]!));
    expect(done).toBe(5);
  });

  it("the same VM asked to sleep on both replicas at once: one sleep (200), one 409", async () => {
    const vm = await sim().createVm();
    await addRouteVia(stacks[0]!, vm.id, "both-replicas");
    const answers = await Promise.all(stacks.map((s) => api(s, "POST", `/vms/${vm.id}/sleep`)));
    expect(answers.map((a) => a.status).sort()).toEqual([200, 409]);
    expect(answers.find((a) => a.status === 409)!.json.error).toMatch(/^(a sleep of this vm is already under way|vm is not running)/);
    expect(sim().snapshots(vm.id)).toHaveLength(1);
  });

  it("requests to both sidecars across sleeps asked on either replica: all answered, one wake per sleep", async () => {
    const vm = await sim().createVm();
    const route = await addRouteVia(stacks[1]!, vm.id, "woken-once");
    const host = `${route.subdomain}.hatch.local`;
    for (let round = 1; round <= 3; round++) {
      const sleeper = stacks[round % 2]!;
      expect((await api(sleeper, "POST", `/vms/${vm.id}/sleep`)).status).toBe(200);
      const replies = await Promise.all(
        Array.from({ length: 30 }, (_, i) => call(stacks[i % 2]!.wake!.url, { host, path: `/r${round}-${i}`, headers: { "x-hatch-wake-secret": SECRET } })),
      );
      expect(replies.map((r) => r.status)).toEqual(Array(30).fill(200));
      expect(sim().getVm(vm.id)!.wake_count).toBe(round);
    }
  });
});
