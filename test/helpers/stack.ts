/**
 * The product as separate parts for sleep tests: the simulator serving Hatch's API on its own (so
 * the hatch-proxy stack can stop and start while VMs keep running), and the stack (route API +
 * wake sidecar, or the embedded proxy) on a database that outlives it.
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { testConfig, type Config } from "../../src/config.ts";
import { silentLogger, type Logger } from "../../src/log.ts";
import { addEmbeddedProxy, startStack, type Stack } from "../../src/stack.ts";
import type { SleeperOptions } from "../../src/lifecycle/sleeper.ts";
import { createSimulator, type Simulator, type SimulatorOptions } from "../../src/vms/simulator/index.ts";
import { simNetworkOptions } from "./sim-network.ts";
import { freshDb, type DbKind, type TestDb } from "./db.ts";
import { freePort } from "./env.ts";
import { seededDataDir } from "./pglite-template.ts";

export const API_KEY = "sleep-test-key";

/**
 * A simulator with its Hatch-compatible API on a free loopback port (`users`: HATCH_SIM_USERS, key →
 * user; `extra`: more of its settings), its VMs on the network under test (see sim-network.ts).
 */
export async function standaloneSimulator(
  ipPrefix: string,
  restoreMs = 200,
  users?: ReadonlyMap<string, string>,
  extra: Partial<SimulatorOptions> = {},
): Promise<{ sim: Simulator; url: string; close(): Promise<void> }> {
  const sim = await createSimulator({ ipPrefix, restoreMs, users, ...simNetworkOptions(ipPrefix), ...extra });
  const served = await sim.listen({ host: "127.0.0.1", port: 0 });
  return {
    sim,
    url: served.url,
    async close() {
      await served.close();
      await sim.close();
    },
  };
}

/** A database the stack opens by itself (Postgres URL, or a PGlite directory), reusable across restarts. */
export async function stackDatabase(kind: DbKind): Promise<{ overrides: Partial<Config>; drop(): Promise<void> }> {
  if (kind === "postgres") {
    const t: TestDb = await freshDb("postgres");
    // The stack opens its own pool; the fixture's handle is not needed.
    await t.database.close();
    return { overrides: { databaseUrl: t.url }, drop: () => t.drop() };
  }
  const dir = seededDataDir("hatch-sleep-");
  return { overrides: { databaseUrl: undefined, dataDir: dir }, drop: async () => rmSync(dir, { recursive: true, force: true }) };
}

export interface StackPorts {
  apiPort: number;
  wakePort: number;
}

export async function stackPorts(): Promise<StackPorts> {
  return { apiPort: await freePort(), wakePort: await freePort() };
}

/** Config for a stack on fixed loopback ports (Traefik polls and dials them across restarts). */
export function stackConfig(ports: StackPorts, overrides: Partial<Config>): Config {
  return testConfig({
    httpAddr: { host: "127.0.0.1", port: ports.apiPort },
    wakeAddr: { host: "127.0.0.1", port: ports.wakePort },
    proxyAddr: { host: "127.0.0.1", port: 0 },
    routeApiUrl: `http://127.0.0.1:${ports.apiPort}`,
    wakeUrl: `http://127.0.0.1:${ports.wakePort}`,
    apiKeys: [API_KEY],
    wakePageAfterMs: 0,
    vmSyncIntervalMs: 500,
    logLevel: "silent",
    ...overrides,
  });
}

/** Starts the route API with the sidecar (`front: "traefik"`) or with the embedded proxy. */
export async function startSleepStack(config: Config, front: "traefik" | "embedded", sleeperOptions?: SleeperOptions, log: Logger = silentLogger): Promise<Stack> {
  const stack = await startStack(config, log, { api: true, wake: front === "traefik", ...(sleeperOptions && { sleeperOptions }) });
  if (front === "embedded") await addEmbeddedProxy(stack);
  return stack;
}

/** A route API call with the test key. */
export async function api(stack: Stack, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(stack.api!.url + path, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, ...(body !== undefined && { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

/** Creates a route through the API; returns it. */
export async function addRouteVia(stack: Stack, vmId: string, subdomain: string, port = 8080): Promise<{ id: string; subdomain: string }> {
  const r = await api(stack, "POST", `/vms/${vmId}/routes`, { subdomain, target_port: port });
  if (r.status !== 201) throw new Error(`route not created: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

