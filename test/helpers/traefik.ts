/** A real Traefik for tests: flags only (no file), its own log file, stopped by the caller. */
import { spawn, type ChildProcess } from "node:child_process";
import { request } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./env.ts";

export interface TestTraefik {
  child: ChildProcess;
  /** The public entry point (`web`). */
  entryPort: number;
  /** The `traefik` entry point: API, ping, metrics. */
  apiUrl: string;
  logFile: string;
  /** Status of GET /api/http/routers/<name>@http (0 when Traefik does not answer). */
  routerStatus(name: string): Promise<number>;
  /** Resolves once the router is loaded (or throws after `timeoutMs`). */
  waitForRouter(name: string, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export interface TraefikOptions {
  /** The HTTP provider endpoint (the route API's /traefik/config). */
  providerUrl: string;
  token?: string | undefined;
  pollInterval?: string;
  /** Ports to use; free ones are picked otherwise (the API URL must sometimes be known first). */
  entryPort?: number;
  apiPort?: number;
}

/** Picks the two ports a Traefik will use, so its API URL can be configured before it starts. */
export async function traefikPorts(): Promise<{ entryPort: number; apiPort: number; apiUrl: string }> {
  const entryPort = await freePort();
  const apiPort = await freePort();
  return { entryPort, apiPort, apiUrl: `http://127.0.0.1:${apiPort}` };
}

/** Starts Traefik and waits until it has applied a config with the catch-all router. */
export async function startTestTraefik(bin: string, opts: TraefikOptions): Promise<TestTraefik> {
  const entryPort = opts.entryPort ?? (await freePort());
  const apiPort = opts.apiPort ?? (await freePort());
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const logDir = mkdtempSync(join(tmpdir(), "hatch-traefik-"));
  const logFile = join(logDir, "traefik.log");
  const child = spawn(
    bin,
    [
      `--entryPoints.web.address=127.0.0.1:${entryPort}`,
      `--entryPoints.traefik.address=127.0.0.1:${apiPort}`,
      "--api.insecure=true",
      "--api.dashboard=false",
      "--ping.entryPoint=traefik",
      "--metrics.prometheus.entryPoint=traefik",
      "--metrics.prometheus.addServicesLabels=true",
      `--providers.http.endpoint=${opts.providerUrl}`,
      ...(opts.token ? [`--providers.http.headers.Authorization=Bearer ${opts.token}`] : []),
      `--providers.http.pollInterval=${opts.pollInterval ?? "250ms"}`,
      "--providers.providersThrottleDuration=0s",
      "--global.checkNewVersion=false",
      "--global.sendAnonymousUsage=false",
      "--log.level=INFO",
      "--log.format=json",
      `--log.filePath=${logFile}`,
    ],
    { stdio: "ignore" },
  );
  const routerStatus = (name: string) =>
    fetch(`${apiUrl}/api/http/routers/${name}@http`, { signal: AbortSignal.timeout(1000) }).then(
      (r) => r.status,
      () => 0,
    );
  const waitForRouter = async (name: string, timeoutMs = 20_000) => {
    const deadline = Date.now() + timeoutMs;
    while ((await routerStatus(name)) !== 200) {
      if (child.exitCode !== null) throw new Error(`Traefik exited with ${child.exitCode}: ${readLog(logFile)}`);
      if (Date.now() > deadline) throw new Error(`Traefik did not load router ${name} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const t: TestTraefik = {
    child,
    entryPort,
    apiUrl,
    logFile,
    routerStatus,
    waitForRouter,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        await new Promise((r) => child.once("exit", r));
      }
      rmSync(logDir, { recursive: true, force: true });
    },
  };
  try {
    await waitForRouter("hatch-wake");
  } catch (err) {
    await t.stop();
    throw err;
  }
  return t;
}

function readLog(file: string): string {
  try {
    return readFileSync(file, "utf8").slice(-2000);
  } catch {
    return "(no log)";
  }
}

/**
 * A request to `host` on a Traefik entry point at 127.0.0.1:`port`, as wildcard DNS would send it.
 * `follow307`: a 307 (the sleep fallback sends the client back to the same URL) is asked again, up to 3 times.
 */
export async function viaEntry(
  port: number,
  host: string,
  path: string,
  opts: { headers?: Record<string, string>; follow307?: boolean; timeoutMs?: number } = {},
): Promise<{ status: number; body: string }> {
  for (let hop = 0; ; hop++) {
    const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, path, headers: { host, ...opts.headers }, agent: false, timeout: opts.timeoutMs ?? 15_000 }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on("timeout", () => req.destroy(new Error(`no answer from ${host}${path}`)));
      req.on("error", reject);
      req.end();
    });
    if (!opts.follow307 || r.status !== 307 || hop >= 3) return r;
  }
}
