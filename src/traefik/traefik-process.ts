/** A Traefik process, ours or adopted, and the small process and port helpers the supervisor needs. */
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";

/** A Traefik process: our child, or one an earlier run left behind and this one adopted. */
export interface TraefikProcess {
  readonly pid: number;
  readonly exited: boolean;
  kill(signal: NodeJS.Signals): void;
  /** Called once, when the process is gone; `how` says how when it is known. */
  onExit(cb: (how: { code: number | null; signal: NodeJS.Signals | null }) => void): void;
}

/** Our spawned child as a TraefikProcess. */
export function ownChild(child: ChildProcess): TraefikProcess {
  return {
    pid: child.pid ?? 0,
    get exited() {
      return child.exitCode !== null || child.signalCode !== null;
    },
    kill: (signal) => void child.kill(signal),
    onExit: (cb) => void child.once("exit", (code, signal) => cb({ code, signal })),
  };
}

/** A live Traefik that is not our child: its exit is seen by polling (its status is not ours to read). */
export function adopt(pid: number): TraefikProcess {
  let exited = false;
  const waiters: ((how: { code: number | null; signal: NodeJS.Signals | null }) => void)[] = [];
  const poll = setInterval(() => {
    if (alive(pid)) return;
    exited = true;
    clearInterval(poll);
    for (const cb of waiters.splice(0)) cb({ code: null, signal: null });
  }, 100);
  poll.unref();
  return {
    pid,
    get exited() {
      return exited;
    },
    kill: (signal) => {
      try {
        process.kill(pid, signal);
      } catch {
        // already gone
      }
    },
    onExit: (cb) => (exited ? cb({ code: null, signal: null }) : void waiters.push(cb)),
  };
}

/** SIGTERM, SIGKILL after `timeoutMs`; resolves once the process has exited (bounded either way). */
export function stopProcess(child: TraefikProcess, timeoutMs: number): Promise<void> {
  if (child.exited) return Promise.resolve();
  return new Promise((done) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    const giveUp = setTimeout(done, timeoutMs + 1000);
    child.onExit(() => {
      clearTimeout(kill);
      clearTimeout(giveUp);
      done();
    });
    child.kill("SIGTERM");
  });
}

/** True when `pid` runs Traefik on `configFile` (Linux /proc); elsewhere nothing is ever killed. */
export function isOurTraefik(pid: number, configFile: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes(`--configFile=${configFile}`);
  } catch {
    return false;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function portIsFree(port: number): Promise<boolean> {
  return new Promise((done) => {
    const s = createServer();
    s.once("error", () => done(false));
    s.listen(port, "127.0.0.1", () => s.close(() => done(true)));
  });
}

/** `preferred` when it is free, else any free loopback port (the OS picks). */
export async function freeLoopbackPort(preferred: number): Promise<number> {
  if (preferred && (await portIsFree(preferred))) return preferred;
  return new Promise((done, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => done(port));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export const formatMs = (ms: number) => (ms < 1000 ? `${ms}ms` : `${Math.round(ms / 100) / 10}s`);
