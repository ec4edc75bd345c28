/**
 * The idle sweeper: every HATCH_IDLE_CHECK_INTERVAL, in the one process holding the sweeper lease,
 * puts to sleep each running VM that has routes, no open connection, and no activity for
 * HATCH_IDLE_TIMEOUT (per VM, not per route; a VM never reached counts from its first route).
 */
import type { Config } from "../config.ts";
import type { Database } from "../db/client.ts";
import { listIdleFacts, pruneConnections } from "../db/activity.repo.ts";
import { acquireLease, releaseLease } from "../db/sleeps.repo.ts";
import type { Logger } from "../log.ts";
import type { VmDirectory } from "../vms/platform.ts";
import type { ActivityRecorder } from "./activity.ts";
import type { FrontActivity } from "./front-activity.ts";
import { STALE_MS } from "./runtime.ts";
import { readEstablishedPorts } from "./ssh-sessions.ts";
import type { Sleeper } from "./sleeper.ts";
import type { SleepWatch } from "./sleep-watch.ts";

export const SWEEPER_LEASE = "idle-sweeper";
/** Sleeps one sweep may run at once (each drains for a second or more). */
const CONCURRENT_SLEEPS = 8;

export interface SweeperDeps {
  config: Config;
  database: Database;
  directory: VmDirectory;
  activity: ActivityRecorder;
  sleeps: SleepWatch;
  sleeper: Sleeper;
  front: FrontActivity;
  log: Logger;
}

export class IdleSweeper {
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;
  private readonly running = new Set<string>();
  private leader = false;
  private stopped = false;
  private sshVisible: boolean | undefined;
  private paused: string | undefined;
  private readonly sleeping = new Set<Promise<unknown>>();
  private readonly startedAt = Date.now();

  constructor(private readonly deps: SweeperDeps) {}

  /** How long the lease lasts without renewal: a crashed leader is replaced after this. */
  get leaseMs(): number {
    return Math.max(3 * this.deps.config.idleCheckIntervalMs, 5000);
  }

  start(): void {
    if (this.deps.config.idleTimeoutMs <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.tick(), this.deps.config.idleCheckIntervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.ticking;
    // The sleeper was closed first: drains under way end at their next look, snapshots finish.
    await Promise.allSettled([...this.sleeping]);
    if (this.leader) await releaseLease(this.deps.database, SWEEPER_LEASE, this.deps.activity.holder).catch(() => {});
  }

  /** Established SSH ports, or undefined when the conntrack table cannot be read (said once). */
  private async sshPorts(): Promise<Set<number> | undefined> {
    const ports = await readEstablishedPorts(this.deps.config.idleSshConntrack);
    const visible = ports !== undefined;
    if (visible !== this.sshVisible) {
      if (visible) this.deps.log.info("idle sweeper: ssh sessions to VMs are seen", { conntrack: this.deps.config.idleSshConntrack });
      else this.deps.log.info("idle sweeper: ssh sessions to VMs cannot be seen here; a VM used only over ssh may be put to sleep", { conntrack: this.deps.config.idleSshConntrack });
      this.sshVisible = visible;
    }
    return ports;
  }

  /** True while this process holds the sweeper lease. */
  get isLeader(): boolean {
    return this.leader;
  }

  /** One sweep (also callable directly); concurrent calls share it. */
  tick(): Promise<void> {
    this.ticking ??= this.sweep()
      .catch((err: unknown) => this.deps.log.warn("idle sweep failed; next one in an interval", { err }))
      .finally(() => (this.ticking = undefined));
    return this.ticking;
  }

  private async sweep(): Promise<void> {
    const { config, database, directory, activity, sleeps, sleeper, front, log } = this.deps;
    if (this.stopped) return;
    const was = this.leader;
    this.leader = await acquireLease(database, SWEEPER_LEASE, activity.holder, this.leaseMs);
    if (this.leader !== was) log.info(this.leader ? "idle sweeper: this process sweeps" : "idle sweeper: another process sweeps", { holder: activity.holder });
    if (!this.leader) return;
    // Until this process has seen a full interval of every source, an old "last activity" could
    // make a busy VM look idle (a restart, say): wait for a fresh view first.
    if (!front.warm || Date.now() - this.startedAt < config.idleCheckIntervalMs) return;
    const unsafe = sleeper.unconfirmable();
    if (unsafe !== this.paused) {
      if (unsafe) log.warn("idle sleep paused", { why: unsafe });
      else if (this.paused) log.info("idle sleep resumed");
      this.paused = unsafe;
    }
    if (unsafe) return;
    await activity.flush();
    if (Math.random() < 0.1) await pruneConnections(database, 10 * STALE_MS).catch(() => 0);
    const facts = await listIdleFacts(database, STALE_MS);
    const due = facts.filter((f) => {
      const vm = directory.peek(f.vmId);
      // A VM the platform refuses to put to sleep (the snapshot limit) is not asked again until it changes.
      return vm?.state === "running" && f.openConnections === 0 && f.idleMs >= config.idleTimeoutMs && !sleeper.blocks.reason(f.vmId, vm);
    });
    const ssh = due.length ? await this.sshPorts() : undefined;
    for (const f of due) {
      if (this.stopped || this.running.size >= CONCURRENT_SLEEPS) break;
      if (this.running.has(f.vmId) || sleeps.get(f.vmId)) continue;
      const sshPort = directory.peek(f.vmId)?.ssh_port;
      if (ssh && typeof sshPort === "number" && sshPort > 0 && ssh.has(sshPort)) {
        // Someone is logged in: in use, though no request reached it.
        activity.touch(f.vmId);
        log.debug("idle vm kept up: ssh session open", { vm: f.vmId, ssh_port: sshPort });
        continue;
      }
      this.running.add(f.vmId);
      const p = sleeper.sleep(f.vmId, "idle", { idleForMs: f.idleMs }).finally(() => {
        this.running.delete(f.vmId);
        this.sleeping.delete(p);
      });
      this.sleeping.add(p);
    }
  }
}
