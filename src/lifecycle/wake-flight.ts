/**
 * The wake flight: one per VM, shared by every request held for it (and across replicas through
 * the VM's advisory lock). It waits out a sleep in progress, wakes the VM on the platform unless
 * it is already up, waits until the port answers, and hands its waiters the VM. The hold around it
 * (waiter slots, bodies, pages) is vm-lifecycle.ts's.
 */
import type { Config } from "../config.ts";
import type { Database } from "../db/client.ts";
import { databaseUnavailable } from "../db/errors.ts";
import type { Logger } from "../log.ts";
import { SLEEPING_STATES, WakeError, type Vm, type VmDirectory, type VmPlatform } from "../vms/platform.ts";
import type { ActivityRecorder } from "./activity.ts";
import { FailureError, NO_NETWORK, ShuttingDownError, WakeTimeoutError, type Failure } from "./failure.ts";
import type { WakeMetrics, WakeOutcome } from "./metrics.ts";
import { waitForPort } from "./ready.ts";
import { SingleFlight, type Flight } from "./single-flight.ts";
import type { SleepWatch } from "./sleep-watch.ts";
import { WakeHistory } from "./wake-history.ts";
import type { AddressGuard } from "./address-guard.ts";

/** The lock a wake and a sleep of one VM share (sleeper.ts takes it around the snapshot). */
export const vmLockName = (vmId: string) => `wake:${vmId}`;

/** What a wake flight hands its waiters. */
export interface Woken {
  vm: Vm;
  /** The port the flight probed (other ports of the VM are probed by their own requests). */
  port: number;
  /** When the flight gives up (Date.now() scale); late joiners share it. */
  deadline: number;
}

export interface WakeFlightDeps {
  config: Config;
  database: Database;
  platform: VmPlatform;
  directory: VmDirectory;
  activity: ActivityRecorder;
  sleeps: SleepWatch;
  metrics: WakeMetrics;
  log: Logger;
}

/** The owner's lifetime as a flight sees it: flights register a stop for when the process closes. */
export interface FlightLifetime {
  readonly closed: boolean;
  readonly closers: Set<() => void>;
  /** Aborted when the process closes. */
  readonly signal: AbortSignal;
  /** The wake timeout's public text. */
  readonly timeoutText: string;
}

export class WakeFlights {
  private readonly wakes = new SingleFlight<Woken>();
  private readonly probes = new SingleFlight<number>();
  /** Wakes under way and recent wake durations, for the waking page. */
  readonly history = new WakeHistory();

  constructor(
    private readonly deps: WakeFlightDeps,
    private readonly lifetime: FlightLifetime,
    /** The public answer for an error a flight ended with. */
    private readonly failureOf: (err: unknown, vmId: string) => Failure,
    private readonly addresses?: AddressGuard,
  ) {}

  /**
   * True when `vm` came up within `withinMs`: woken by this process, or (woken elsewhere) its
   * platform `updated_at` is that recent. Tells a direct router's failure caused by a sleep (the
   * VM was down a moment ago) from an app answering 502 itself.
   */
  recentlyUp(vmId: string, vm: Vm, withinMs = 30_000): boolean {
    const now = Date.now();
    if (now - (this.history.lastUpAt(vmId) ?? 0) <= withinMs) return true;
    const updated = typeof vm.updated_at === "string" ? Date.parse(vm.updated_at) : NaN;
    return Number.isFinite(updated) && Math.abs(now - updated) <= withinMs;
  }

  /** How long the wake of `vmId` under way here has run, and its last wake durations (ms). */
  progress(vmId: string): { elapsedMs: number | undefined; recentMs: readonly number[] } {
    const started = this.history.startedAt(vmId);
    return { elapsedMs: started === undefined ? undefined : Date.now() - started, recentMs: this.history.durations(vmId) };
  }

  /** The VM of a finished flight, with `port` answering too (probed once per address for other ports). */
  async ready(vmId: string, port: number, subdomain: string): Promise<Woken> {
    const woken = await this.wakes.run(vmId, (flight) => this.runWake(vmId, port, subdomain, flight));
    if (woken.port === port) return woken;
    // The flight refused a VM without an address: this one has one.
    const ip = woken.vm.guest_ip!;
    const key = `${ip}:${port}`;
    try {
      await this.probes.run(key, () => waitForPort(ip, port, { deadline: woken.deadline, signal: this.lifetime.signal }));
    } catch {
      throw new FailureError({ status: 504, error: this.lifetime.timeoutText });
    }
    return { ...woken, port };
  }

  private async runWake(vmId: string, port: number, subdomain: string, flight: Flight): Promise<Woken> {
    const { config, database, directory, log, metrics } = this.deps;
    const started = performance.now();
    const deadline = Date.now() + config.wakeTimeoutMs;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new WakeTimeoutError()), config.wakeTimeoutMs);
    const onClose = () => ac.abort(new ShuttingDownError());
    this.lifetime.closers.add(onClose);
    let outcome: WakeOutcome = "failed";
    let failure: Failure | undefined;
    let woke = false;
    this.history.began(vmId);
    try {
      if (this.lifetime.closed) throw new ShuttingDownError();
      // A sleep in progress finishes first (its snapshot holds the same lock); then this wakes it.
      await this.deps.sleeps.settled(vmId, ac.signal);
      let ran = false;
      const wakeIt = async () => {
        ran = true;
        if (ac.signal.aborted) throw ac.signal.reason;
        // Re-read inside the lock: another replica may have woken it while we waited.
        const live = await directory.refreshOne(vmId);
        if (!live) throw new FailureError({ status: 502, error: "vm not found" });
        if (live.state === "running" || live.state === "starting") return live;
        if (!SLEEPING_STATES.includes(live.state)) throw new FailureError({ status: 503, error: `vm is in state "${live.state}", not proxying` });
        // Waking it would make two running VMs claim one address: never start that ourselves.
        const taken = this.addresses?.check(live);
        if (taken) throw new FailureError(taken);
        woke = true;
        return await this.wakeOnPlatform(vmId, deadline, ac.signal);
      };
      const vm = await abortable(
        database.withLock(vmLockName(vmId), Math.max(1, deadline - Date.now()), wakeIt).catch((err: unknown) => {
          const down = !ran && databaseUnavailable(err);
          if (!down) throw err;
          // Waking must not depend on the database: this process's single flight still makes one
          // wake here, and a replica waking it too meets the platform's "already running" (handled).
          log.warn("waking without the cross-replica lock: database unavailable", { vm: vmId, cause: down.cause });
          return wakeIt();
        }),
        ac.signal,
      );
      if (!vm.guest_ip) throw new FailureError(NO_NETWORK);
      const conflict = this.addresses?.check(vm);
      if (conflict) throw new FailureError(conflict);
      await waitForPort(vm.guest_ip, port, { deadline, signal: ac.signal });
      let ready = vm;
      if (vm.state === "running") directory.record(vm);
      else ready = (await directory.refreshOne(vmId).catch(() => undefined)) ?? vm;
      // Woken is in use: the idle clock starts again now, even before the first answer.
      this.deps.activity.touch(vmId);
      outcome = "ok";
      return { vm: ready, port, deadline };
    } catch (err) {
      failure = this.failureOf(err, vmId);
      outcome = failure.status === 504 ? "timeout" : "failed";
      throw new FailureError(failure);
    } finally {
      clearTimeout(timer);
      this.lifetime.closers.delete(onClose);
      const ms = performance.now() - started;
      this.history.ended(vmId, outcome === "ok", woke && outcome === "ok" ? ms : undefined);
      metrics.wake(outcome, ms / 1000);
      const fields = { vm: vmId, subdomain, duration_ms: Math.round(ms), waiters: flight.joined, outcome, woke };
      if (failure) log.warn("vm wake", { ...fields, error: failure.error, detail: failure.detail });
      else log.info("vm wake", fields);
    }
  }

  private async wakeOnPlatform(vmId: string, deadline: number, signal: AbortSignal): Promise<Vm> {
    try {
      return await abortable(this.deps.platform.wake(vmId, { timeoutMs: Math.max(1, deadline - Date.now()), signal }), signal);
    } catch (err) {
      // Someone else (another replica, the API) restored it first: fine if it is coming up.
      if (err instanceof WakeError && err.reason === "conflict") {
        const again = await this.deps.directory.refreshOne(vmId);
        if (again && (again.state === "running" || again.state === "starting")) return again;
      }
      throw err;
    }
  }

}

/** Rejects with the signal's reason when it aborts first; the underlying work is left to finish. */
export function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}
