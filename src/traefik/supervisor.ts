/**
 * The Traefik that `npm start` runs in front of the sidecar, kept alive:
 * - it runs in its own session with its output going straight to a file, so it outlives a crash of
 *   this process and keeps routing running VMs from its last good config (as compose's separate
 *   container does); the next start adopts it when its static config is the one this start would
 *   write (no gap in routing), and replaces it otherwise (its pid is kept in the data directory);
 * - its loopback entry point gets a port free at start, and a start counts only once the Traefik
 *   answering there routes to this process's sidecar: another instance's Traefik does not count;
 * - when it exits it is restarted with backoff, each restart logged, and `/readyz` says why the
 *   front is down until it routes again;
 * - a Traefik that is alive but stops answering its ping (hung, stopped, wedged) is killed once the
 *   silence lasts `hangTimeoutMs`, and then restarted like one that exited.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { resolve } from "node:path";
import { parse, stringify } from "yaml";
import { randomBytes } from "node:crypto";
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { WAKE_SERVICE } from "./config-builder.ts";
import { buildStaticConfig, internalApiRoutes, TRAEFIK_INTERNAL_PORT } from "./static-config.ts";

export interface TraefikSupervisorOptions {
  bin: string;
  config: Config;
  log: Logger;
  /** Told the new API/metrics URL when Traefik's loopback entry point had to move to another port. */
  onApiUrl?: (url: string) => void;
  /** Longest wait for one start, until Traefik routes with our config. Default 15 s. */
  startTimeoutMs?: number;
  /** Pause before the first restart, doubled after each failed one up to `max`. Default 500 ms / 30 s. */
  restartDelayMs?: { first: number; max: number };
  /** How long Traefik gets to stop on SIGTERM before SIGKILL. Default 3 s. */
  stopTimeoutMs?: number;
  /** A running Traefik that answers no ping for this long is killed and restarted. Default: HATCH_TRAEFIK_HANG_TIMEOUT. */
  hangTimeoutMs?: number;
}

/** How often a running Traefik is pinged by the hang watch, and how long one ping may take. */
const WATCH_EVERY_MS = 1000;
const WATCH_PING_TIMEOUT_MS = 2000;

type State = "new" | "starting" | "up" | "down" | "stopping" | "stopped";

/** The secrets Traefik and this process share: the provider token and the wake secret. */
export interface FrontSecrets {
  traefikToken: string;
  wakeSecret: string;
}

/** A Traefik process: our child, or one an earlier run left behind and this one adopted. */
interface TraefikProcess {
  readonly pid: number;
  readonly exited: boolean;
  kill(signal: NodeJS.Signals): void;
  /** Called once, when the process is gone; `how` says how when it is known. */
  onExit(cb: (how: { code: number | null; signal: NodeJS.Signals | null }) => void): void;
}

/** A run that lasted this long was healthy: the next crash restarts after the first delay again. */
const HEALTHY_RUN_MS = 60_000;

export class TraefikSupervisor {
  readonly files: { config: string; internalApi: string; log: string; pid: string; secrets: string };
  private readonly startTimeoutMs: number;
  private readonly delays: { first: number; max: number };
  private readonly stopTimeoutMs: number;
  private port = 0;
  private child: TraefikProcess | undefined;
  /** The opts' config with the shared secrets this start settled on (prepare()). */
  private config: Config;
  private state: State = "new";
  private downReason = "";
  private restarts = 0;
  private nextDelay: number;
  private upSince = 0;
  private downSince = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private restarting: Promise<void> | undefined;
  private readonly hangTimeoutMs: number;
  private watchTimer: NodeJS.Timeout | undefined;
  private lastPingOk = 0;
  /** Set when the hang watch killed the child: its exit is then told as a hang, not a crash. */
  private hung: string | undefined;

  constructor(private readonly opts: TraefikSupervisorOptions) {
    const dir = resolve(opts.config.dataDir);
    this.files = {
      config: resolve(dir, "traefik.yml"),
      internalApi: resolve(dir, "traefik-internal-api.yml"),
      log: resolve(dir, "traefik.log"),
      pid: resolve(dir, "traefik.pid"),
      secrets: resolve(dir, "traefik-secrets.json"),
    };
    this.config = opts.config;
    this.startTimeoutMs = opts.startTimeoutMs ?? 15_000;
    this.delays = opts.restartDelayMs ?? { first: 500, max: 30_000 };
    this.stopTimeoutMs = opts.stopTimeoutMs ?? 3000;
    this.hangTimeoutMs = opts.hangTimeoutMs ?? opts.config.traefikHangTimeoutMs;
    this.nextDelay = this.delays.first;
  }

  /** Traefik's loopback entry point (API pages, ping, metrics); known after prepare(). */
  get apiUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The running Traefik's pid, if any. */
  get pid(): number | undefined {
    return this.child && !this.child.exited ? this.child.pid : undefined;
  }

  /**
   * Settles the shared secrets and the loopback port, before anything listens (the stack needs the
   * secrets, the sleeper the API URL). A Traefik an earlier run left behind (a crash of ours leaves
   * it routing) is adopted when its static config is the one this start would write with the
   * secrets it was given: it keeps routing throughout, and polls this process's config from then on.
   * Otherwise it is replaced, and the config's secrets (or fresh ones) are written for a new Traefik.
   */
  async prepare(): Promise<{ apiUrl: string; secrets: FrontSecrets; adopted: boolean }> {
    mkdirSync(this.opts.config.dataDir, { recursive: true });
    const leftover = this.leftoverPid();
    if (leftover !== undefined) {
      const kept = this.adoptable();
      if (kept) {
        this.config = { ...this.opts.config, ...kept.secrets };
        this.port = kept.port;
        this.child = adopt(leftover);
        writeFileSync(this.files.pid, `${leftover}\n`);
        this.opts.log.info("adopting the Traefik an earlier hatch-proxy left running", { pid: leftover, api: this.apiUrl });
        return { apiUrl: this.apiUrl, secrets: kept.secrets, adopted: true };
      }
      await this.replace(leftover);
    }
    const secrets: FrontSecrets = {
      traefikToken: this.opts.config.traefikToken ?? randomBytes(24).toString("base64url"),
      wakeSecret: this.opts.config.wakeSecret ?? randomBytes(24).toString("base64url"),
    };
    this.config = { ...this.opts.config, ...secrets };
    this.port = await freeLoopbackPort(TRAEFIK_INTERNAL_PORT);
    this.writeFiles();
    return { apiUrl: this.apiUrl, secrets, adopted: false };
  }

  /** The first start: resolves once Traefik routes with our config, rejects (and stops it) otherwise. */
  async start(): Promise<void> {
    this.state = "starting";
    const adopted = this.child;
    if (adopted) {
      try {
        await this.waitUntilOurs(adopted);
        this.supervise(adopted);
        this.state = "up";
        this.watch();
        this.opts.log.info("traefik adopted: routing with this process's config", { pid: adopted.pid, api: this.apiUrl });
        return;
      } catch (err) {
        this.opts.log.warn("the adopted Traefik does not route with this process's config; replacing it", { pid: adopted.pid, error: err });
        await stopProcess(adopted, this.stopTimeoutMs);
        this.child = undefined;
        const before = this.apiUrl;
        this.port = await freeLoopbackPort(TRAEFIK_INTERNAL_PORT);
        this.writeFiles();
        if (this.apiUrl !== before) this.opts.onApiUrl?.(this.apiUrl);
      }
    }
    for (let attempt = 1; ; attempt++) {
      try {
        await this.launch();
        break;
      } catch (err) {
        // Another instance starting at the same moment may have taken the port between our check
        // and Traefik's bind (ours then exits): once more on another port.
        if (attempt === 1 && !(await portIsFree(this.port))) {
          await this.movePortIfTaken();
          continue;
        }
        this.state = "stopped";
        throw err;
      }
    }
    this.state = "up";
    this.watch();
    this.opts.log.info("traefik started", { pid: this.child!.pid, static_config: this.files.config, api: this.apiUrl });
  }

  /** Why the public front does not route now, or undefined when it does (for /readyz). */
  async notReadyReason(): Promise<string | undefined> {
    switch (this.state) {
      case "new":
      case "starting":
        return "traefik is starting";
      case "down":
        return this.downReason;
      case "stopping":
      case "stopped":
        return "traefik is stopped";
      case "up": {
        const ok = await fetch(`${this.apiUrl}/ping`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false);
        return ok ? undefined : `traefik (pid ${this.child?.pid}) does not answer its ping at ${this.apiUrl}/ping`;
      }
    }
  }

  /** Stops Traefik (SIGTERM, then SIGKILL after the stop timeout) and any restart under way. */
  async stop(): Promise<void> {
    this.state = "stopping";
    clearTimeout(this.restartTimer);
    clearTimeout(this.watchTimer);
    const child = this.child;
    if (child) await stopProcess(child, this.stopTimeoutMs);
    // A restart under way has just lost its child, or sees the state before spawning one: quick.
    await this.restarting?.catch(() => {});
    this.forget();
    this.state = "stopped";
  }

  /** No Traefik of ours runs any more: nothing for a next start to adopt, no secret left on disk. */
  private forget(): void {
    rmSync(this.files.pid, { force: true });
    rmSync(this.files.secrets, { force: true });
  }

  /** Kills Traefik at once (a forced exit must not leave it behind); synchronous. */
  kill(): void {
    this.state = "stopped";
    clearTimeout(this.restartTimer);
    clearTimeout(this.watchTimer);
    const pid = this.pid;
    if (pid) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    this.forget();
  }

  // ---- starting one Traefik ---------------------------------------------------------------------

  private writeFiles(): void {
    const { config } = this;
    writeFileSync(this.files.internalApi, stringify(internalApiRoutes()), { mode: 0o600 });
    // Traefik gets 2 s of its own grace on stop (then our SIGKILL at 3 s), within npm start's 5 s.
    const staticConfig = buildStaticConfig(config, { apiPort: this.port, internalApiFile: this.files.internalApi, graceTimeOut: "2s" });
    // The file holds the provider token when one is set.
    writeFileSync(this.files.config, stringify(staticConfig), { mode: 0o600 });
    // For the next start, to adopt this Traefik if we crash: what it must serve it to keep it.
    const secrets = { traefik_token: config.traefikToken, wake_secret: config.wakeSecret };
    writeFileSync(this.files.secrets, `${JSON.stringify(secrets)}\n`, { mode: 0o600 });
  }

  /** The static config a Traefik on `port` would have been started with by this start, given `secrets`. */
  private staticConfigText(port: number, secrets: FrontSecrets): string {
    const config = { ...this.opts.config, ...secrets };
    return stringify(buildStaticConfig(config, { apiPort: port, internalApiFile: this.files.internalApi, graceTimeOut: "2s" }));
  }

  /** Spawns Traefik and waits until it routes with our config; on failure it is stopped again. */
  private async launch(): Promise<void> {
    if (this.state === "stopping" || this.state === "stopped") throw new Error("traefik is being stopped");
    const logFd = openSync(this.files.log, "a");
    let spawned: ChildProcess;
    try {
      // Its own session: a Ctrl-C in our terminal is ours to handle, and Traefik never writes into a
      // pipe that dies with us (a SIGPIPE would take it down and every running VM's route with it).
      spawned = spawn(this.opts.bin, [`--configFile=${this.files.config}`], { detached: true, stdio: ["ignore", logFd, logFd] });
    } finally {
      closeSync(logFd);
    }
    const child = ownChild(spawned);
    this.child = child;
    this.opts.log.info("traefik launched: waiting until it routes with this process's config", { pid: child.pid });
    const exited = new Promise<never>((_, reject) => {
      spawned.once("error", (err) => reject(new Error(`traefik could not be run: ${err.message}`)));
      child.onExit(({ code, signal }) => reject(new Error(`traefik exited (${signal ?? `code ${code}`}) while starting; see ${this.files.log}`)));
    });
    exited.catch(() => {});
    try {
      await Promise.race([this.waitUntilOurs(child), exited]);
      // Its exit may have come with the last answer; onExit below would never hear of it.
      if (child.exited) throw new Error(`traefik exited while starting; see ${this.files.log}`);
    } catch (err) {
      await stopProcess(child, this.stopTimeoutMs);
      throw err;
    }
    writeFileSync(this.files.pid, `${child.pid}\n`);
    this.supervise(child);
  }

  private supervise(child: TraefikProcess): void {
    this.upSince = Date.now();
    child.onExit((how) => this.onExit(child, how.code, how.signal));
  }

  /**
   * Ping answers before the first provider poll is applied (until then every host gets a 404), and
   * it may come from another process on the port. The sidecar service of the loaded config must be
   * this process's: only one process can listen on our wake URL.
   */
  private async waitUntilOurs(child: TraefikProcess): Promise<void> {
    const deadline = Date.now() + this.startTimeoutMs;
    const service = `${this.apiUrl}/api/http/services/${WAKE_SERVICE}@http`;
    let last = "no answer";
    for (;;) {
      if (child.exited) throw new Error(`traefik exited while starting; see ${this.files.log}`);
      try {
        const res = await fetch(service, { signal: AbortSignal.timeout(500) });
        const body = (await res.json().catch(() => undefined)) as { loadBalancer?: { servers?: { url?: string }[] } } | undefined;
        const urls = body?.loadBalancer?.servers?.map((s) => s.url) ?? [];
        if (res.ok && urls.includes(this.config.wakeUrl)) return;
        last = res.ok ? `its sidecar is ${urls.join(", ") || "unknown"}, not ${this.config.wakeUrl}: another hatch-proxy's Traefik holds ${this.apiUrl}` : `config not loaded yet (HTTP ${res.status})`;
      } catch {
        last = "no answer";
      }
      if (Date.now() > deadline) {
        throw new Error(`traefik did not route with the configuration from ${this.config.routeApiUrl}/traefik/config within ${this.startTimeoutMs / 1000}s (${last}); see ${this.files.log}`);
      }
      await sleep(100);
    }
  }

  // ---- supervision --------------------------------------------------------------------------------

  private onExit(child: TraefikProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.child || this.state !== "up") return;
    rmSync(this.files.pid, { force: true });
    clearTimeout(this.watchTimer);
    const hung = this.hung;
    this.hung = undefined;
    if (Date.now() - this.upSince >= HEALTHY_RUN_MS) this.nextDelay = this.delays.first;
    this.state = "down";
    // A hang began when the pings stopped, not when the watch gave up on them.
    this.downSince = hung ? this.lastPingOk : Date.now();
    if (hung) {
      this.opts.log.error("traefik hung; killed it and restarting", { pid: child.pid, silent_ms: Date.now() - this.lastPingOk, restart: this.restarts + 1, in_ms: this.nextDelay, log: this.files.log });
      this.scheduleRestart(hung);
    } else {
      this.opts.log.error("traefik exited; restarting", { code, signal, restart: this.restarts + 1, in_ms: this.nextDelay, log: this.files.log });
      this.scheduleRestart(`traefik exited (${signal ?? (code === null ? "status unknown: not our child" : `code ${code}`)})`);
    }
  }

  /**
   * Pings the running Traefik every second. A process that is alive but silent for the hang timeout
   * (stopped, deadlocked, starved) routes nothing and would never exit on its own: it is killed,
   * and its exit restarts it.
   */
  private watch(): void {
    this.lastPingOk = Date.now();
    const child = this.child;
    const tick = async () => {
      if (this.state !== "up" || child !== this.child) return;
      // A slow answer under load is still an answer: only silence for the whole timeout is a hang.
      const ok = await fetch(`${this.apiUrl}/ping`, { signal: AbortSignal.timeout(WATCH_PING_TIMEOUT_MS) }).then((r) => r.ok, () => false);
      if (this.state !== "up" || child !== this.child) return;
      if (ok) this.lastPingOk = Date.now();
      else if (Date.now() - this.lastPingOk >= this.hangTimeoutMs) {
        this.hung = `traefik (pid ${child?.pid}) answered no ping for ${formatMs(Date.now() - this.lastPingOk)}; killed`;
        child?.kill("SIGKILL");
        return;
      }
      this.watchTimer = setTimeout(tick, WATCH_EVERY_MS).unref();
    };
    this.watchTimer = setTimeout(tick, WATCH_EVERY_MS).unref();
  }

  private scheduleRestart(why: string): void {
    const delay = this.nextDelay;
    this.nextDelay = Math.min(this.delays.max, this.nextDelay * 2);
    this.downReason = `${why}; restart ${this.restarts + 1} in ${formatMs(delay)}`;
    this.restartTimer = setTimeout(() => {
      this.restarting = this.restart(why).finally(() => (this.restarting = undefined));
    }, delay);
  }

  private async restart(why: string): Promise<void> {
    if (this.state !== "down") return;
    this.restarts += 1;
    this.downReason = `${why}; restarting (restart ${this.restarts})`;
    try {
      await this.movePortIfTaken();
      await this.launch();
    } catch (err) {
      if ((this.state as State) !== "down") return;
      this.opts.log.error("traefik restart failed", { restart: this.restarts, error: err, next_in_ms: this.nextDelay });
      this.scheduleRestart(`traefik restart ${this.restarts} failed: ${(err as Error).message}`);
      return;
    }
    // stop() may have come while it started: that Traefik is stopped there.
    if ((this.state as State) !== "down") return;
    this.state = "up";
    this.watch();
    this.opts.log.info("traefik restarted", { restart: this.restarts, pid: this.child?.pid, down_ms: Date.now() - this.downSince });
  }

  /** Another process took the loopback port while Traefik was down: move to a free one and say so. */
  private async movePortIfTaken(): Promise<void> {
    if (await portIsFree(this.port)) return;
    const previous = this.apiUrl;
    this.port = await freeLoopbackPort(0);
    this.writeFiles();
    this.opts.log.warn("traefik's loopback port is taken by another process; moved", { from: previous, to: this.apiUrl });
    this.opts.onApiUrl?.(this.apiUrl);
  }

  /** The pid of a Traefik an earlier run started from our static config and did not stop (a crash). */
  private leftoverPid(): number | undefined {
    let pid: number;
    try {
      pid = Number(readFileSync(this.files.pid, "utf8").trim());
    } catch {
      return undefined;
    }
    rmSync(this.files.pid, { force: true });
    return Number.isInteger(pid) && pid > 0 && isOurTraefik(pid, this.files.config) ? pid : undefined;
  }

  /**
   * The port and secrets to keep a leftover Traefik with: its static config must be byte for byte
   * the one this start writes with them (same public address, provider endpoint, entry points), and
   * secrets the operator set must be the ones it was given.
   */
  private adoptable(): { port: number; secrets: FrontSecrets } | undefined {
    try {
      const kept = JSON.parse(readFileSync(this.files.secrets, "utf8")) as { traefik_token?: unknown; wake_secret?: unknown };
      if (typeof kept.traefik_token !== "string" || typeof kept.wake_secret !== "string") return undefined;
      const secrets = { traefikToken: kept.traefik_token, wakeSecret: kept.wake_secret };
      const { traefikToken, wakeSecret } = this.opts.config;
      if ((traefikToken && traefikToken !== secrets.traefikToken) || (wakeSecret && wakeSecret !== secrets.wakeSecret)) return undefined;
      const text = readFileSync(this.files.config, "utf8");
      const address = String((parse(text) as { entryPoints?: { traefik?: { address?: unknown } } })?.entryPoints?.traefik?.address ?? "");
      const port = Number(/^127\.0\.0\.1:(\d+)$/.exec(address)?.[1]);
      if (!Number.isInteger(port) || port <= 0 || text !== this.staticConfigText(port, secrets)) return undefined;
      return { port, secrets };
    } catch {
      return undefined;
    }
  }

  /** Stops a leftover Traefik this start cannot keep (SIGTERM, then SIGKILL). */
  private async replace(pid: number): Promise<void> {
    this.opts.log.warn("replacing the Traefik an earlier hatch-proxy left running (its static config differs from this start's)", { pid });
    await stopProcess(adopt(pid), this.stopTimeoutMs);
  }
}

/** Our spawned child as a TraefikProcess. */
function ownChild(child: ChildProcess): TraefikProcess {
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
function adopt(pid: number): TraefikProcess {
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
function stopProcess(child: TraefikProcess, timeoutMs: number): Promise<void> {
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
function isOurTraefik(pid: number, configFile: string): boolean {
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

function portIsFree(port: number): Promise<boolean> {
  return new Promise((done) => {
    const s = createServer();
    s.once("error", () => done(false));
    s.listen(port, "127.0.0.1", () => s.close(() => done(true)));
  });
}

/** `preferred` when it is free, else any free loopback port (the OS picks). */
async function freeLoopbackPort(preferred: number): Promise<number> {
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const formatMs = (ms: number) => (ms < 1000 ? `${ms}ms` : `${Math.round(ms / 100) / 10}s`);
