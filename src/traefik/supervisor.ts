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
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { FrontIdentity } from "./front-identity.ts";
import type { FrontSecrets, TraefikFiles } from "./traefik-files.ts";
import { launchTraefik, waitUntilOurs } from "./traefik-launch.ts";
import { HangWatch, RestartBackoff, RestartLoop } from "./supervision.ts";
import { stopProcess, type TraefikProcess } from "./traefik-process.ts";

export type { FrontSecrets } from "./traefik-files.ts";

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

type State = "new" | "starting" | "up" | "down" | "stopping" | "stopped";

export class TraefikSupervisor {
  private readonly front: FrontIdentity;
  private readonly stopTimeoutMs: number;
  private child: TraefikProcess | undefined;
  private state: State = "new";
  private readonly backoff: RestartBackoff;
  private readonly restarts: RestartLoop;
  private readonly hangWatch: HangWatch;
  /** Set when the hang watch killed the child: its exit is then told as a hang, not a crash. */
  private hung: string | undefined;

  constructor(private readonly opts: TraefikSupervisorOptions) {
    this.stopTimeoutMs = opts.stopTimeoutMs ?? 3000;
    this.front = new FrontIdentity({ ...opts, startTimeoutMs: opts.startTimeoutMs ?? 15_000, stopTimeoutMs: this.stopTimeoutMs });
    this.backoff = new RestartBackoff(opts.restartDelayMs ?? { first: 500, max: 30_000 });
    this.hangWatch = new HangWatch(opts.hangTimeoutMs ?? opts.config.traefikHangTimeoutMs);
    this.restarts = new RestartLoop({
      backoff: this.backoff,
      isDown: () => this.state === "down",
      relaunch: async () => {
        await this.front.movePortIfTaken();
        await this.launch();
      },
      onUp: (restart, downMs) => {
        this.state = "up";
        this.watch();
        this.opts.log.info("traefik restarted", { restart, pid: this.child?.pid, down_ms: downMs });
      },
      log: opts.log,
    });
  }

  /** Traefik's loopback entry point (API pages, ping, metrics); known after prepare(). */
  get apiUrl(): string {
    return this.front.apiUrl;
  }

  /** Its files in the data directory (static config, log, pid, secrets). */
  get files(): TraefikFiles {
    return this.front.files;
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
    const settled = await this.front.settle();
    this.child = settled.adopted;
    return { apiUrl: this.apiUrl, secrets: settled.secrets, adopted: settled.adopted !== undefined };
  }

  /** The first start: resolves once Traefik routes with our config, rejects (and stops it) otherwise. */
  async start(): Promise<void> {
    this.state = "starting";
    const adopted = this.child;
    if (adopted) {
      try {
        await waitUntilOurs(adopted, this.front.launchOptions());
        this.supervise(adopted);
        this.state = "up";
        this.watch();
        this.opts.log.info("traefik adopted: routing with this process's config", { pid: adopted.pid, api: this.apiUrl });
        return;
      } catch (err) {
        this.opts.log.warn("the adopted Traefik does not route with this process's config; replacing it", { pid: adopted.pid, error: err });
        await stopProcess(adopted, this.stopTimeoutMs);
        this.child = undefined;
        await this.front.renew();
      }
    }
    for (let attempt = 1; ; attempt++) {
      try {
        await this.launch();
        break;
      } catch (err) {
        // Another instance starting at the same moment may have taken the port between our check
        // and Traefik's bind (ours then exits): once more on another port.
        if (attempt === 1 && !(await this.front.portIsFree())) {
          await this.front.movePortIfTaken();
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
        return this.restarts.reason;
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
    this.hangWatch.stop();
    const child = this.child;
    const restarts = this.restarts.cancel();
    if (child) await stopProcess(child, this.stopTimeoutMs);
    // A restart under way has just lost its child, or sees the state before spawning one: quick.
    await restarts;
    this.files.forget();
    this.state = "stopped";
  }

  /** Kills Traefik at once (a forced exit must not leave it behind); synchronous. */
  kill(): void {
    this.state = "stopped";
    this.restarts.cancelNow();
    this.hangWatch.stop();
    const pid = this.pid;
    if (pid) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    this.files.forget();
  }

  // ---- starting one Traefik ---------------------------------------------------------------------

  /** Spawns Traefik and waits until it routes with our config; on failure it is stopped again. */
  private async launch(): Promise<void> {
    if (this.state === "stopping" || this.state === "stopped") throw new Error("traefik is being stopped");
    const child = await launchTraefik({ ...this.front.launchOptions(), onSpawn: (c) => (this.child = c) });
    this.files.writePid(child.pid);
    this.supervise(child);
  }

  private supervise(child: TraefikProcess): void {
    this.backoff.up();
    child.onExit((how) => this.onExit(child, how.code, how.signal));
  }

  // ---- supervision --------------------------------------------------------------------------------

  private onExit(child: TraefikProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (child !== this.child || this.state !== "up") return;
    this.files.forgetPid();
    this.hangWatch.stop();
    const hung = this.hung;
    this.hung = undefined;
    this.backoff.down();
    this.state = "down";
    const lastPingOk = this.hangWatch.lastPingOk;
    const fields = { restart: this.backoff.restarts + 1, in_ms: this.backoff.next, log: this.files.log };
    if (hung) {
      this.opts.log.error("traefik hung; killed it and restarting", { pid: child.pid, silent_ms: Date.now() - lastPingOk, ...fields });
      // A hang began when the pings stopped, not when the watch gave up on them.
      this.restarts.begin(hung, lastPingOk);
    } else {
      this.opts.log.error("traefik exited; restarting", { code, signal, ...fields });
      this.restarts.begin(`traefik exited (${signal ?? (code === null ? "status unknown: not our child" : `code ${code}`)})`, Date.now());
    }
  }

  /** Kills a running Traefik that answers no ping for the hang timeout; its exit restarts it. */
  private watch(): void {
    const child = this.child;
    this.hangWatch.start(this.apiUrl, () => this.state === "up" && child === this.child, (why) => {
      this.hung = `traefik (pid ${child?.pid}) ${why}; killed`;
      child?.kill("SIGKILL");
    });
  }
}
