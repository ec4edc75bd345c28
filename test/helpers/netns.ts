/**
 * Network-namespace tests: whether they can run here (like env.ts does for Postgres and Traefik),
 * how to run a scenario inside a fresh namespace, and the TCP probes such scenarios measure with.
 * Probes only ever dial addresses inside namespaces the test itself made.
 */
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { fileURLToPath } from "node:url";

export const requireNetns = process.env.REQUIRE_NETNS === "1";
const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));

let unavailable: string | null | undefined;
/** Why this machine cannot make network namespaces for tests (undefined when it can); probed once. */
export function netnsUnavailableReason(): string | undefined {
  if (unavailable === undefined) {
    // The whole toolchain a scenario needs: unshare -n, ip inside the new namespace, nsenter.
    const r = spawnSync("unshare", ["-n", "sh", "-c", "ip link set lo up && nsenter --version"], { encoding: "utf8", timeout: 10_000 });
    if (r.error) unavailable = `\`unshare -n\` cannot run (${r.error.message})`;
    else if (r.status !== 0) unavailable = `\`unshare -n sh -c 'ip link set lo up && nsenter --version'\` failed (${(r.stderr || `exit ${r.status}`).trim()}); root is needed`;
    else unavailable = null;
  }
  return unavailable ?? undefined;
}

/** True when namespace suites should run; says why when they are skipped; throws when REQUIRE_NETNS=1 and they cannot run. */
export function netnsEnabled(): boolean {
  const why = netnsUnavailableReason();
  if (why === undefined) return true;
  if (requireNetns) throw new Error(`REQUIRE_NETNS=1 but ${why}`);
  console.warn(`[hatch-proxy tests] ${why}: network-namespace suites are SKIPPED. Run as root, or set REQUIRE_NETNS=1 to fail instead.`);
  return false;
}

export interface ScenarioRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `node --import tsx <script>` as the first process of a fresh network namespace with lo up
 * (Node cannot enter a namespace itself). The namespace, and whatever the script left in it, ends
 * with its last process.
 */
export function runInFreshNetns(script: string, timeoutMs: number): Promise<ScenarioRun> {
  const child = spawn("unshare", ["-n", "sh", "-c", 'ip link set lo up && exec "$0" --import tsx "$1"', process.execPath, script], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The last line of a scenario's stdout, parsed as JSON (its results); throws with all its output when there is none. */
export function lastJsonLine<T>(run: ScenarioRun): T {
  const line = run.stdout.trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(line) as T;
  } catch {
    throw new Error(`scenario printed no JSON result (exit ${run.code ?? run.signal}).\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`);
  }
}

/** How a TCP connect ended: connected, failed with an error code, or still pending at the client's timeout. */
export interface ConnectOutcome {
  outcome: "connected" | "error" | "timeout";
  code?: string;
  ms: number;
}

/** Dials host:port and reports what happened within timeoutMs (then gives up, as a client with that timeout would). */
export function probeConnect(host: string, port: number, timeoutMs: number): Promise<ConnectOutcome> {
  const started = performance.now();
  const ms = () => Math.round(performance.now() - started);
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (o: Omit<ConnectOutcome, "ms">) => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...o, ms: ms() });
    };
    const timer = setTimeout(() => done({ outcome: "timeout" }), timeoutMs);
    socket.once("connect", () => done({ outcome: "connected" }));
    socket.once("error", (err: NodeJS.ErrnoException) => done({ outcome: "error", code: err.code ?? err.message }));
  });
}

/** A raw keep-alive HTTP/1.1 connection that records every byte it receives and how it ended. */
export class KeepAliveClient {
  received = "";
  ended: { how: "error" | "close"; code?: string; at: number } | undefined;
  private readonly socket: Socket;

  constructor(host: string, port: number) {
    this.socket = connect({ host, port });
    this.socket.setEncoding("utf8").on("data", (d: string) => (this.received += d));
    this.socket.once("error", (err: NodeJS.ErrnoException) => (this.ended ??= { how: "error", code: err.code ?? err.message, at: performance.now() }));
    this.socket.once("close", () => (this.ended ??= { how: "close", at: performance.now() }));
  }

  /** Sends a GET for `path` without waiting for its answer. */
  send(path: string): void {
    this.socket.write(`GET ${path} HTTP/1.1\r\nHost: guest\r\nConnection: keep-alive\r\n\r\n`);
  }

  /** Resolves true when `text` has arrived within timeoutMs, false otherwise. */
  async waitFor(text: string, timeoutMs: number): Promise<boolean> {
    const until = performance.now() + timeoutMs;
    while (!this.received.includes(text)) {
      if (this.ended || performance.now() > until) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  }

  /** Resolves when the connection has ended (error or close) or timeoutMs has passed. */
  async waitForEnd(timeoutMs: number): Promise<void> {
    const until = performance.now() + timeoutMs;
    while (!this.ended && performance.now() < until) await new Promise((r) => setTimeout(r, 20));
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** This process's live children with their command lines (from /proc; zombies excluded, as Node reaps its children). */
export function childProcesses(): { pid: number; cmd: string }[] {
  const found: { pid: number; cmd: string }[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // Fields after the command name (which may hold spaces): state, ppid, …
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(ppid) !== process.pid || state === "Z") continue;
      found.push({ pid: Number(entry), cmd: readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ").trim().slice(0, 200) });
    } catch {
      // the process ended while we looked
    }
  }
  return found;
}

/** True while a process with this pid exists and is not a zombie. */
export function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}
