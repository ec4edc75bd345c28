/** Starting one Traefik: spawned in its own session, and trusted only once it routes with this process's config. */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import type { Logger } from "../log.ts";
import { WAKE_SERVICE } from "./config-builder.ts";
import { ownChild, sleep, stopProcess, type TraefikProcess } from "./traefik-process.ts";

export interface LaunchOptions {
  bin: string;
  /** Its static config and its log file. */
  configFile: string;
  logFile: string;
  /** Its loopback entry point (API pages, ping, metrics). */
  apiUrl: string;
  /** This process's sidecar, which the loaded config must route to, and the API whose config it polls. */
  wakeUrl: string;
  routeApiUrl: string;
  startTimeoutMs: number;
  stopTimeoutMs: number;
  log: Logger;
  /** Told of the process as soon as it is spawned, before it routes (a forced exit must be able to kill it). */
  onSpawn?: (child: TraefikProcess) => void;
}

/** Spawns Traefik and resolves once it routes with our config; on failure it is stopped again, and the promise rejects. */
export async function launchTraefik(o: LaunchOptions): Promise<TraefikProcess> {
  const logFd = openSync(o.logFile, "a");
  let spawned: ChildProcess;
  try {
    // Its own session: a Ctrl-C in our terminal is ours to handle, and Traefik never writes into a
    // pipe that dies with us (a SIGPIPE would take it down and every running VM's route with it).
    spawned = spawn(o.bin, [`--configFile=${o.configFile}`], { detached: true, stdio: ["ignore", logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  const child = ownChild(spawned);
  o.onSpawn?.(child);
  o.log.info("traefik launched: waiting until it routes with this process's config", { pid: child.pid });
  const exited = new Promise<never>((_, reject) => {
    spawned.once("error", (err) => reject(new Error(`traefik could not be run: ${err.message}`)));
    child.onExit(({ code, signal }) => reject(new Error(`traefik exited (${signal ?? `code ${code}`}) while starting; see ${o.logFile}`)));
  });
  exited.catch(() => {});
  try {
    await Promise.race([waitUntilOurs(child, o), exited]);
    // Its exit may have come with the last answer; the supervisor would never hear of it.
    if (child.exited) throw new Error(`traefik exited while starting; see ${o.logFile}`);
  } catch (err) {
    await stopProcess(child, o.stopTimeoutMs);
    throw err;
  }
  return child;
}

/**
 * Ping answers before the first provider poll is applied (until then every host gets a 404), and
 * it may come from another process on the port. The sidecar service of the loaded config must be
 * this process's: only one process can listen on our wake URL.
 */
export async function waitUntilOurs(child: TraefikProcess, o: Pick<LaunchOptions, "apiUrl" | "wakeUrl" | "routeApiUrl" | "startTimeoutMs" | "logFile">): Promise<void> {
  const deadline = Date.now() + o.startTimeoutMs;
  const service = `${o.apiUrl}/api/http/services/${WAKE_SERVICE}@http`;
  let last = "no answer";
  for (;;) {
    if (child.exited) throw new Error(`traefik exited while starting; see ${o.logFile}`);
    try {
      const res = await fetch(service, { signal: AbortSignal.timeout(500) });
      const body = (await res.json().catch(() => undefined)) as { loadBalancer?: { servers?: { url?: string }[] } } | undefined;
      const urls = body?.loadBalancer?.servers?.map((s) => s.url) ?? [];
      if (res.ok && urls.includes(o.wakeUrl)) return;
      last = res.ok ? `its sidecar is ${urls.join(", ") || "unknown"}, not ${o.wakeUrl}: another hatch-proxy's Traefik holds ${o.apiUrl}` : `config not loaded yet (HTTP ${res.status})`;
    } catch {
      last = "no answer";
    }
    if (Date.now() > deadline) {
      throw new Error(`traefik did not route with the configuration from ${o.routeApiUrl}/traefik/config within ${o.startTimeoutMs / 1000}s (${last}); see ${o.logFile}`);
    }
    await sleep(100);
  }
}
