import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSimulator, type Simulator, type SimVm } from "../src/vms/simulator/index.ts";

// Not used by any other test file, so parallel files never share guest addresses.
const PREFIX = "127.0.44";

const guestUrl = (vm: SimVm, path = "/", port = vm.guest_ports[0]!) => `http://${vm.guest_ip}:${port}${path}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Tick {
  event: string;
  data: { i: number; vm_id: string; boot: number };
}

/** Parses complete `event:`/`data:` blocks out of an SSE text. */
function parseEvents(text: string): Tick[] {
  return text
    .split("\n\n")
    .filter((block) => block.trim() !== "")
    .map((block) => {
      const lines = block.split("\n");
      const event = lines.find((l) => l.startsWith("event: "))!.slice("event: ".length);
      const data = JSON.parse(lines.find((l) => l.startsWith("data: "))!.slice("data: ".length));
      return { event, data };
    });
}

const activeTimeouts = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;

describe("simulator: /events (server-sent events)", () => {
  let sim: Simulator;
  let vm: SimVm;
  beforeAll(async () => {
    sim = await createSimulator({ ipPrefix: PREFIX, restoreMs: 0 });
    vm = await sim.createVm();
  });
  afterAll(() => sim.close());

  it("sends n tick events ms apart with SSE headers, then ends", async () => {
    const t0 = performance.now();
    const res = await fetch(guestUrl(vm, "/events?ms=120&n=3&rid=sse"));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    expect(res.headers.get("cache-control")).toBe("no-store");
    const arrivals: number[] = [];
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of res.body!) {
      arrivals.push(performance.now());
      text += decoder.decode(chunk, { stream: true });
    }
    expect(text.endsWith("\n\n")).toBe(true);
    expect(parseEvents(text)).toEqual([0, 1, 2].map((i) => ({ event: "tick", data: { i, vm_id: vm.id, boot: 1 } })));
    expect(text.startsWith(`event: tick\ndata: {"i":0,"vm_id":"${vm.id}","boot":1}\n\n`)).toBe(true);
    expect(arrivals.length).toBeGreaterThanOrEqual(2); // written over time, not in one piece
    expect(arrivals.at(-1)! - t0).toBeGreaterThanOrEqual(230);
  });

  it("n=0 ends right after the head; without n it keeps ticking until the client leaves", async () => {
    const empty = await fetch(guestUrl(vm, "/events?n=0&ms=50000"));
    expect(empty.status).toBe(200);
    expect(await empty.text()).toBe("");

    const res = await fetch(guestUrl(vm, "/events?ms=30"));
    const reader = res.body!.getReader();
    let text = "";
    while (parseEvents(text.slice(0, text.lastIndexOf("\n\n") + 2)).length < 4) {
      const { value, done } = await reader.read();
      expect(done).toBe(false);
      text += new TextDecoder().decode(value);
    }
    expect(parseEvents(text.slice(0, text.lastIndexOf("\n\n") + 2)).slice(0, 4).map((e) => e.data.i)).toEqual([0, 1, 2, 3]);
    await reader.cancel();
  });

  it("clears its timers when clients go away", async () => {
    const streams = await Promise.all(Array.from({ length: 20 }, () => fetch(guestUrl(vm, "/events?ms=60000"))));
    expect(streams.every((r) => r.status === 200)).toBe(true);
    // Each open stream waits on one timer for its next tick (other timers in the process come and go).
    await expect.poll(activeTimeouts).toBeGreaterThanOrEqual(20);
    const peak = activeTimeouts();
    await Promise.all(streams.map((r) => r.body!.cancel()));
    let now = activeTimeouts();
    for (let i = 0; i < 100 && now > peak - 18; i++) {
      await sleep(20);
      now = activeTimeouts();
    }
    expect(now).toBeLessThanOrEqual(peak - 18);
  });

  it("ms=0 without n is an idle stream: the head at once, then nothing until the VM sleeps", async () => {
    const idleVm = await sim.createVm();
    const t0 = performance.now();
    const res = await fetch(guestUrl(idleVm, "/events?ms=0"));
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const reader = res.body!.getReader();
    const first = reader.read();
    first.catch(() => undefined);
    const outcome = await Promise.race([first.then(() => "data", () => "error"), sleep(300).then(() => "still open")]);
    expect(outcome).toBe("still open");

    await sim.snapshot(idleVm.id);
    await expect(first).rejects.toThrow("terminated");
    await sim.restore(idleVm.id);
    // After the wake, the stream says which boot serves it.
    const again = await fetch(guestUrl(idleVm, "/events?ms=0&n=1"));
    expect(parseEvents(await again.text())).toEqual([{ event: "tick", data: { i: 0, vm_id: idleVm.id, boot: 2 } }]);
    await sim.deleteVm(idleVm.id);
  });
});
