/**
 * The sleep tests' setup through a real Traefik: a standalone simulator, a database that outlives
 * restarts (Postgres when available), a route API + sidecar stack that can restart on the same
 * ports, and a Traefik polling it with its API and metrics read by the stack.
 */
import type { Stack } from "../../src/stack.ts";
import { dbKinds } from "./db.ts";
import { stackConfig, stackDatabase, stackPorts, standaloneSimulator, startSleepStack, type StackPorts } from "./stack.ts";
import { startTestTraefik, traefikPorts, type TestTraefik } from "./traefik.ts";

const SETTLE = { settleMs: 400 };
/**
 * HATCH_VM_RESPONSE_TIMEOUT for these suites (60 s by default): a request on a connection Traefik
 * kept to a VM the platform then froze waits this long before its fallback, and the suites'
 * four load workers would otherwise all sit in such requests with nothing left to wake the VM.
 */
export const SUITE_VM_RESPONSE_TIMEOUT_MS = 3000;

export interface SleepTraefik {
  readonly stack: Stack;
  readonly traefik: TestTraefik;
  readonly simulator: Awaited<ReturnType<typeof standaloneSimulator>>;
  readonly kind: "postgres" | "pglite";
  /** Stops the stack (if running) and starts it again with this idle timeout (checked every second). */
  restart(idle: { idleTimeoutMs: number }): Promise<void>;
  /** Stops the stack only (Traefik keeps routing with its last config). */
  stopStack(): Promise<void>;
  /** Traefik has the route's direct routers (the VM is running and no sleep is under way). */
  direct(routeId: string): Promise<boolean>;
  close(): Promise<void>;
}

/** Starts everything; the stack begins with idle sleep off. */
export async function startSleepTraefik(bin: string, ipPrefix: string): Promise<SleepTraefik> {
  const kind = (await dbKinds()).includes("postgres") ? "postgres" : "pglite";
  // Twenty sleeps of one VM: past Hatch's 10 snapshots, so this suite lifts the limit.
  const simulator = await standaloneSimulator(ipPrefix, 200, undefined, { snapshotLimit: 0 });
  const db = await stackDatabase(kind);
  const ports: StackPorts = await stackPorts();
  const tports = await traefikPorts();
  const configFor = (idle: { idleTimeoutMs: number }) =>
    stackConfig(ports, { ...db.overrides, hatchApiUrl: simulator.url, wakeSecret: "s3cret", traefikApiUrls: [tports.apiUrl], idleCheckIntervalMs: 1000, vmResponseTimeoutMs: SUITE_VM_RESPONSE_TIMEOUT_MS, ...idle });
  let stack: Stack | undefined = await startSleepStack(configFor({ idleTimeoutMs: 0 }), "traefik", SETTLE);
  const traefik = await startTestTraefik(bin, { providerUrl: `${stack.api!.url}/traefik/config`, ...tports });
  return {
    get stack() {
      return stack!;
    },
    traefik,
    simulator,
    kind,
    async restart(idle) {
      await stack?.close();
      stack = await startSleepStack(configFor(idle), "traefik", SETTLE);
    },
    async stopStack() {
      await stack?.close();
      stack = undefined;
    },
    direct: (routeId) => traefik.routerStatus(routeId).then((s) => s === 200),
    async close() {
      await traefik.stop();
      await stack?.close();
      await simulator.close();
      await db.drop();
    },
  };
}
