/**
 * Puts a running VM to sleep without losing a request:
 *
 *   1. a `vm_sleeps` row (phase draining) takes the VM's direct routers out of every replica's
 *      Traefik config, so new requests reach the sidecar;
 *   2. every configured Traefik instance is asked until none has the routers any more;
 *   3. in-flight work on the old path finishes: Traefik's counters for the VM's services stay
 *      still for a settle window, and no proxy process reports an open request or connection;
 *   4. under the VM's wake lock, draining → sleeping (unless cancelled), then snapshot or stop.
 *
 * An idle sleep is cancelled by any request that arrives while it drains (or by an open
 * connection); a sleep asked for through the API holds those requests instead and they are served
 * after the wake they trigger. A drain that does not finish within HATCH_IDLE_DRAIN_TIMEOUT is
 * cancelled, never forced. Whatever happens, the row goes at the end and the routers follow the
 * VM's real state again.
 */
import { Counter, Histogram, Registry } from "prom-client";
import { formatDuration, type Config } from "../config.ts";
import { LockTimeoutError, type Database } from "../db/client.ts";
import { openConnections } from "../db/activity.repo.ts";
import { listRoutesByVm } from "../db/routes.repo.ts";
import type { VmSleepRow } from "../db/schema.ts";
import { beginSleep, cancelOwnSleep, endSleep, getSleep, heartbeatSleep, startSleeping, type SleepReason } from "../db/sleeps.repo.ts";
import type { Logger } from "../log.ts";
import { routeObjectName, routeRouterNames } from "../traefik/config-builder.ts";
import type { TraefikFronts } from "../traefik/fronts.ts";
import { PlatformUnavailableError, SleepError, type SleepAction, type Vm, type VmDirectory, type VmPlatform } from "../vms/platform.ts";
import type { ActivityRecorder } from "./activity.ts";
import { STALE_MS } from "./runtime.ts";
import { vmLockName } from "./wake-flight.ts";
import { sleepOnPlatform } from "./platform-sleep.ts";
import { SleepBlocks } from "./sleep-blocks.ts";

export type SleepResult =
  | { outcome: "done"; vm: Vm; drainMs: number }
  | { outcome: "cancelled"; why: string; drainMs: number }
  | { outcome: "failed"; why: string; drainMs: number; unavailable: boolean; blocked?: boolean }
  | { outcome: "busy"; sleep: VmSleepRow }
  /** Not started: it could not be done without risk (why says what to fix). */
  | { outcome: "refused"; why: string }
  | { outcome: "not_running"; vm: Vm | undefined };

export interface SleeperDeps {
  config: Config;
  database: Database;
  platform: VmPlatform;
  directory: VmDirectory;
  /** This process's recorder: flushed before open counts are read, its holder names our rows. */
  activity: ActivityRecorder;
  fronts: TraefikFronts;
  log: Logger;
  /** When a Traefik last polled this process's /traefik/config (undefined: never). */
  polledAt?: (() => number | undefined) | undefined;
}

export interface SleeperOptions {
  /** Traefik's counters for the VM must stay still this long after the routers are gone. Default 1 s. */
  settleMs?: number;
  /** Shortest drain even without Traefik: every proxy hears of the sleep and reports what it has open. Default 300 ms. */
  minDrainMs?: number;
  /** Pause between two looks at the drain's conditions. Default 100 ms. */
  pollMs?: number;
  /** The blocks to share (withOptions keeps the same ones). */
  blocks?: SleepBlocks;
}

/** The sleep protocol, with its metrics (no per-VM labels). */
export class Sleeper {
  readonly registry = new Registry();
  private readonly sleeps: Counter<"reason" | "outcome">;
  private readonly drain: Histogram<"outcome">;
  /** VMs the platform refuses to put to sleep (the snapshot limit); the sweeper skips them. */
  readonly blocks: SleepBlocks;
  private readonly settleMs: number;
  private readonly minDrainMs: number;
  private readonly pollMs: number;
  private closing = false;

  constructor(
    private readonly deps: SleeperDeps,
    opts: SleeperOptions = {},
  ) {
    this.settleMs = opts.settleMs ?? 1000;
    this.minDrainMs = opts.minDrainMs ?? 300;
    this.pollMs = opts.pollMs ?? 100;
    this.sleeps = new Counter({
      name: "hatch_sleeps_total",
      help: "VM sleeps by reason (idle, api) and outcome (done, cancelled, failed).",
      labelNames: ["reason", "outcome"],
      registers: [this.registry],
    });
    this.drain = new Histogram({
      name: "hatch_sleep_drain_seconds",
      help: "Time from the start of a sleep to the snapshot/stop (done) or to giving up (cancelled, failed).",
      labelNames: ["outcome"],
      buckets: [0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60],
      registers: [this.registry],
    });
    for (const reason of ["idle", "api"]) for (const outcome of ["done", "cancelled", "failed"]) this.sleeps.labels(reason, outcome).inc(0);
    this.blocks = opts.blocks ?? new SleepBlocks(this.registry, deps.log);
  }

  /**
   * Why no sleep can be made safely now, or undefined. A Traefik follows this API (it polls the
   * config) but none is listed in HATCH_TRAEFIK_API_URLS: nothing could confirm it stopped sending
   * requests straight to the VM, and the snapshot would cut them.
   */
  unconfirmable(): string | undefined {
    if (this.closing) return "hatch-proxy is stopping";
    if (this.deps.fronts.configured) return undefined;
    const polled = this.deps.polledAt?.();
    if (polled !== undefined && Date.now() - polled < 60_000) {
      return "a Traefik polls this API's /traefik/config but HATCH_TRAEFIK_API_URLS is unset: nothing can confirm it stopped routing to the vm";
    }
    return undefined;
  }

  /** Stops starting sleeps; drains under way are cancelled (their routers come back). */
  close(): void {
    this.closing = true;
  }

  /** The same protocol with other timing (tests stretch the drain to meet it with a request). */
  withOptions(opts: SleeperOptions): Sleeper {
    return new Sleeper(this.deps, { settleMs: this.settleMs, minDrainMs: this.minDrainMs, pollMs: this.pollMs, blocks: this.blocks, ...opts });
  }

  /**
   * Runs the protocol for `vmId` and resolves with its outcome (never rejects). `idleForMs` is only
   * for the log line of an idle sleep.
   */
  async sleep(vmId: string, reason: SleepReason, opts: { action?: SleepAction; idleForMs?: number } = {}): Promise<SleepResult> {
    const { config, database, directory, activity, log } = this.deps;
    const action = opts.action ?? config.idleAction;
    const refused = this.unconfirmable();
    if (refused) return { outcome: "refused", why: refused };
    let live: Vm | undefined;
    try {
      live = await directory.refreshOne(vmId);
    } catch (err) {
      return { outcome: "failed", why: "vm platform unavailable", drainMs: 0, unavailable: true };
    }
    if (!live || live.state !== "running") return { outcome: "not_running", vm: live };
    const holder = activity.holder;
    const begun = await beginSleep(database, { vmId, reason, action, holder, staleMs: STALE_MS });
    if ("busy" in begun) return { outcome: "busy", sleep: begun.busy };

    const started = performance.now();
    const heartbeat = setInterval(() => void heartbeatSleep(database, vmId, holder).catch(() => {}), Math.floor(STALE_MS / 4));
    heartbeat.unref();
    let result: SleepResult;
    try {
      result = await this.run(vmId, reason, action, started);
    } catch (err) {
      log.error("sleep failed unexpectedly", { vm: vmId, err });
      result = { outcome: "failed", why: "internal error", drainMs: Math.round(performance.now() - started), unavailable: false };
    } finally {
      clearInterval(heartbeat);
      await endSleep(database, vmId, holder).catch((err: unknown) => log.warn("sleep row not removed; it expires on its own", { vm: vmId, err }));
    }
    const outcome = result.outcome as "done" | "cancelled" | "failed";
    this.sleeps.labels(reason, outcome).inc();
    this.drain.labels(outcome).observe(("drainMs" in result ? result.drainMs : 0) / 1000);
    const fields: Record<string, unknown> = { vm: vmId, reason, action, drain_ms: "drainMs" in result ? result.drainMs : 0, outcome };
    if (opts.idleForMs !== undefined) fields.idle_for = formatDuration(Math.round(opts.idleForMs / 1000) * 1000);
    if ("why" in result) fields.why = result.why;
    if (outcome === "failed") log.warn("vm sleep", fields);
    else log.info("vm sleep", fields);
    return result;
  }

  private async run(vmId: string, reason: SleepReason, action: SleepAction, started: number): Promise<SleepResult> {
    const { config, database, directory, activity, fronts } = this.deps;
    const holder = activity.holder;
    const elapsed = () => Math.round(performance.now() - started);
    const deadline = Date.now() + config.idleDrainTimeoutMs;
    const cancel = async (why: string): Promise<SleepResult> => {
      await cancelOwnSleep(database, vmId, holder, why).catch(() => {});
      return { outcome: "cancelled", why, drainMs: elapsed() };
    };

    const begunAt = Date.now();
    const routes = await listRoutesByVm(database, vmId);
    const routers = routes.flatMap((r) => routeRouterNames(r.id));
    const services = routes.map((r) => routeObjectName(r.id));
    let confirmedAt = fronts.configured ? undefined : Date.now();
    let waitingOn = "";
    for (;;) {
      const row = await getSleep(database, vmId);
      if (!row || row.holder !== holder) return { outcome: "cancelled", why: "the sleep was taken over by another process", drainMs: elapsed() };
      if (row.cancelledAt) return { outcome: "cancelled", why: row.cancelReason === "request" ? "a request arrived" : (row.cancelReason ?? "cancelled"), drainMs: elapsed() };
      if (this.closing) return cancel("hatch-proxy is stopping");
      if (Date.now() >= deadline) return cancel(`drain did not finish within ${formatDuration(config.idleDrainTimeoutMs)} (HATCH_IDLE_DRAIN_TIMEOUT): ${waitingOn}`);

      if (confirmedAt === undefined) {
        const check = await fronts.routersAbsent(routers);
        if (check.absent) confirmedAt = Date.now();
        else waitingOn = check.unreadable.length ? `traefik unreadable (${check.unreadable.join(", ")})` : `traefik still routes it (${check.present.join(", ")})`;
      }
      if (confirmedAt !== undefined) {
        let quietSince = confirmedAt;
        if (fronts.configured && services.length) {
          const scrape = await fronts.scrape();
          if (scrape.failed.length) quietSince = Date.now();
          for (const s of services) quietSince = Math.max(quietSince, fronts.lastChangeOf(s) ?? 0);
          // A request that ended on the direct path after the decision: the VM was not idle.
          if (reason === "idle" && services.some((s) => (fronts.lastChangeOf(s) ?? 0) > begunAt)) return cancel("a request reached it through Traefik");
        }
        await activity.flush();
        const open = await openConnections(database, vmId, STALE_MS);
        if (open > 0 && reason === "idle") return cancel(`${open} connection${open === 1 ? "" : "s"} open`);
        const now = Date.now();
        const settled = !fronts.configured || now - quietSince >= this.settleMs;
        if (open === 0 && settled && performance.now() - started >= this.minDrainMs) break;
        waitingOn = open > 0 ? `${open} request${open === 1 ? "" : "s"} or connection${open === 1 ? "" : "s"} still open` : "requests on the direct path still finishing";
      }
      await new Promise((r) => setTimeout(r, this.pollMs));
    }

    let vm: Vm;
    try {
      const remaining = Math.max(1000, deadline - Date.now());
      const slept = await database.withLock(vmLockName(vmId), remaining, async () => {
        // The last moment a request could cancel it: after this, requests wait for the wake.
        if (!(await startSleeping(database, vmId, holder))) return undefined;
        return sleepOnPlatform(this.deps, vmId, action, [...new Set(routes.map((r) => r.targetPort))]);
      });
      if (!slept) {
        const row = await getSleep(database, vmId);
        return { outcome: "cancelled", why: row?.cancelReason === "request" ? "a request arrived" : (row?.cancelReason ?? "cancelled"), drainMs: elapsed() };
      }
      vm = slept;
    } catch (err) {
      if (err instanceof LockTimeoutError) return cancel("a wake of this vm is under way");
      if (err instanceof SleepError && err.reason === "limit") {
        // Refused for good (the snapshot limit): the sweeper leaves the VM alone until it changes.
        const now = await directory.refreshOne(vmId).catch(() => undefined);
        if (now) this.blocks.block(now, err.message);
        return { outcome: "failed", why: err.message, drainMs: elapsed(), unavailable: false, blocked: true };
      }
      const unavailable = err instanceof PlatformUnavailableError || (err instanceof SleepError && err.reason === "timeout");
      const why = err instanceof SleepError || err instanceof PlatformUnavailableError ? err.message : "internal error";
      if (!(err instanceof SleepError || err instanceof PlatformUnavailableError)) this.deps.log.error("sleep failed", { vm: vmId, err });
      // What the VM is now decides its routers when the row goes.
      await directory.refreshOne(vmId).catch(() => undefined);
      return { outcome: "failed", why, drainMs: elapsed(), unavailable };
    }
    directory.record(vm);
    this.blocks.clear(vmId);
    return { outcome: "done", vm, drainMs: elapsed() };
  }
}
