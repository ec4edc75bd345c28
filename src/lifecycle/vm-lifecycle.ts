/**
 * What happens to a VM, in one place: running → draining → asleep → waking → running.
 *
 * The proxies (the wake sidecar and the embedded proxy) ask `admit` what to do with a request for a
 * routed VM: forward it to the running VM, hold it for a wake, or fail it. This module owns the one
 * wake flight per VM (shared by every held request, and across replicas through a Postgres
 * advisory lock), the count of held requests, and the requests that meet a sleep in progress: a
 * draining idle sleep is cancelled by them (the VM is not idle after all), any other sleep makes
 * them wait until it is done and then wake the VM again. The sleep itself runs in sleeper.ts,
 * under the same per-VM lock, so a wake never races a snapshot.
 */
import { formatDuration, type Config } from "../config.ts";
import { LockTimeoutError, type Database } from "../db/client.ts";
import { databaseUnavailable } from "../db/errors.ts";
import type { RouteRow } from "../db/schema.ts";
import { cancelIdleSleep } from "../db/sleeps.repo.ts";
import type { Logger } from "../log.ts";
import { PlatformUnavailableError, SLEEPING_STATES, VmAccessError, WakeError, type Vm, type VmDirectory, type VmPlatform } from "../vms/platform.ts";
import { BodyTooLargeError, bodyTooLargeMessage, ClientGoneError, HeldBytes } from "./held-bytes.ts";
import type { WakeMetrics, WakeOutcome } from "./metrics.ts";
import { ReadyTimeoutError, waitForPort } from "./ready.ts";
import { HoldCounter, SingleFlight, type Flight } from "./single-flight.ts";
import { WakeHistory } from "./wake-history.ts";
import type { ActivityRecorder } from "./activity.ts";
import { FailureError, SHUTTING_DOWN, ShuttingDownError, WakeTimeoutError, type Failure } from "./failure.ts";
import type { SleepWatch } from "./sleep-watch.ts";

/** The lock a wake and a sleep of one VM share (sleeper.ts takes it around the snapshot). */
export const vmLockName = (vmId: string) => `wake:${vmId}`;

export interface LifecycleDeps {
  config: Config;
  database: Database;
  platform: VmPlatform;
  directory: VmDirectory;
  activity: ActivityRecorder;
  sleeps: SleepWatch;
  metrics: WakeMetrics;
  log: Logger;
}

/** What to do with a request for a routed VM. */
export type Admission = { kind: "forward"; vm: Vm } | { kind: "hold" } | { kind: "fail"; failure: Failure };

/** What a wake flight hands its waiters. */
export interface Woken {
  vm: Vm;
  /** The port the flight probed (other ports of the VM are probed by their own requests). */
  port: number;
  /** When the flight gives up (Date.now() scale); late joiners share it. */
  deadline: number;
}

export type WaitOutcome =
  | { kind: "ready"; vm: Vm; body: Buffer | undefined; deadline: number }
  | { kind: "failure"; failure: Failure }
  | { kind: "gone" }
  | { kind: "page" }
  | { kind: "full" };

export class VmLifecycle {
  private readonly holds: HoldCounter;
  private readonly wakes = new SingleFlight<Woken>();
  private readonly probes = new SingleFlight<number>();
  private readonly refreshes = new SingleFlight<Vm | undefined>();
  private readonly closers = new Set<() => void>();
  private readonly closing = new AbortController();
  private readonly timeoutText: string;
  /** Wakes under way and recent wake durations, for the waking page. */
  private readonly history = new WakeHistory();
  private closed = false;

  /** Request bodies held in memory while their VMs wake, under one ceiling per process. */
  readonly heldBodies: HeldBytes;

  constructor(private readonly deps: LifecycleDeps) {
    this.holds = new HoldCounter(deps.config.wakeMaxWaiters, (n) => deps.metrics.waiters(n));
    this.heldBodies = new HeldBytes(deps.config.wakeMaxBuffered, deps.metrics.registry);
    this.timeoutText = `vm did not become ready within ${formatDuration(deps.config.wakeTimeoutMs)} (HATCH_PROXY_WAKE_TIMEOUT)`;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The VM's state from the platform now (concurrent callers share one call). */
  refresh(vmId: string): Promise<Vm | undefined> {
    return this.refreshes.run(vmId, () => this.deps.directory.refreshOne(vmId));
  }

  /** The platform is down (a 503 the client may retry), or hatch-proxy holds no key that may act on the VM (a 503 that says why). */
  platformDown(err: unknown, vmId: string): Failure {
    if (err instanceof VmAccessError) return this.noAccess(err, vmId);
    this.deps.log.warn("vm platform unavailable", { vm: vmId, err });
    return { status: 503, error: "vm platform unavailable", headers: { "retry-after": "1" } };
  }

  /** Decides from the VM's known state alone (no sleep in progress). */
  decide(route: RouteRow, vm: Vm): Admission {
    if (vm.state === "running") return { kind: "forward", vm };
    // A VM already starting is waited for like a wake (the flight sees it and does not restart it).
    if (vm.state === "starting") return { kind: "hold" };
    if (SLEEPING_STATES.includes(vm.state)) {
      if (route.autoWake) return { kind: "hold" };
      return { kind: "fail", failure: { status: 503, error: `vm is ${vm.state} and auto-wake is disabled` } };
    }
    return { kind: "fail", failure: { status: 503, error: `vm is in state "${vm.state}", not proxying` } };
  }

  /**
   * What to do with a request for `route` whose VM is known as `vm`. A request that meets a
   * draining idle sleep cancels it and is forwarded; any other sleep in progress holds it (it is
   * served after the wake that follows), except on a route without auto-wake, which is forwarded
   * while the VM still runs.
   */
  async admit(route: RouteRow, vm: Vm): Promise<Admission> {
    const sleep = this.deps.sleeps.get(route.vmId);
    if (!sleep) return this.decide(route, vm);
    if (sleep.phase === "draining" && (sleep.reason === "idle" || !route.autoWake)) {
      let cancelled = false;
      try {
        cancelled = sleep.reason === "idle" && (await cancelIdleSleep(this.deps.database, route.vmId, "request"));
      } catch (err) {
        this.deps.log.warn("idle sleep could not be cancelled; holding the request for the wake", { vm: route.vmId, err });
      }
      if ((cancelled || sleep.reason !== "idle") && vm.state === "running") return { kind: "forward", vm };
    }
    if (!route.autoWake) return { kind: "fail", failure: { status: 503, error: "vm is going to sleep and auto-wake is disabled" } };
    return { kind: "hold" };
  }

  /** True while a sleep of `vmId` is draining or sleeping. */
  sleepInProgress(vmId: string): boolean {
    return this.deps.sleeps.get(vmId) !== undefined;
  }

  /** The proxy metrics this lifecycle reports to. */
  get metrics(): WakeMetrics {
    return this.deps.metrics;
  }

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
  wakeProgress(vmId: string): { elapsedMs: number | undefined; recentMs: readonly number[] } {
    const started = this.history.startedAt(vmId);
    return { elapsedMs: started === undefined ? undefined : Date.now() - started, recentMs: this.history.durations(vmId) };
  }

  /** Counts one open request or connection to `vmId` (activity for as long as it lasts). */
  track(vmId: string): () => void {
    return this.deps.activity.hold(vmId);
  }

  /**
   * Holds one client until its VM is ready (or the wake fails, the client leaves, the page timer
   * fires, or the process closes). The waiter slot is released on every path.
   */
  async hold(
    route: RouteRow,
    subdomain: string,
    onGone: (cb: () => void) => () => void,
    body: Promise<Buffer> | undefined,
    pageAfterMs: number,
  ): Promise<WaitOutcome> {
    const vmId = route.vmId;
    const release = this.holds.acquire(vmId);
    if (!release) return { kind: "full" };
    const work = Promise.all([this.ready(vmId, route.targetPort, subdomain), body]);
    return new Promise<WaitOutcome>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      let stopGone = () => {};
      const done = (o: WaitOutcome) => {
        if (timer) clearTimeout(timer);
        stopGone();
        this.closers.delete(onClose);
        release();
        resolve(o);
      };
      const onClose = () => done({ kind: "failure", failure: SHUTTING_DOWN });
      this.closers.add(onClose);
      stopGone = onGone(() => done({ kind: "gone" }));
      if (pageAfterMs > 0) timer = setTimeout(() => done({ kind: "page" }), pageAfterMs);
      work.then(
        ([w, b]) => done({ kind: "ready", vm: w.vm, body: b, deadline: w.deadline }),
        (err: unknown) => {
          if (err instanceof ClientGoneError) done({ kind: "gone" });
          else if (err instanceof BodyTooLargeError) done({ kind: "failure", failure: { status: 413, error: bodyTooLargeMessage(err.limit) } });
          else done({ kind: "failure", failure: err instanceof FailureError ? err.failure : this.wakeFailure(err, vmId) });
        },
      );
    });
  }

  /** A 503 for a VM that has more held requests than HATCH_WAKE_MAX_WAITERS. */
  tooManyWaiters(vmId: string): Failure {
    return {
      status: 503,
      error: `too many requests waiting for vm ${vmId} to wake (HATCH_WAKE_MAX_WAITERS=${this.deps.config.wakeMaxWaiters})`,
      headers: { "retry-after": "2" },
    };
  }

  /** The VM of a finished flight, with `port` answering too (probed once per address for other ports). */
  async ready(vmId: string, port: number, subdomain: string): Promise<Woken> {
    const woken = await this.wakes.run(vmId, (flight) => this.runWake(vmId, port, subdomain, flight));
    if (woken.port === port) return woken;
    const key = `${woken.vm.guest_ip}:${port}`;
    try {
      await this.probes.run(key, () => waitForPort(woken.vm.guest_ip, port, { deadline: woken.deadline, signal: this.closing.signal }));
    } catch {
      throw new FailureError({ status: 504, error: this.timeoutText });
    }
    return { ...woken, port };
  }

  // ---- the wake flight (one per VM, shared by every waiter) -------------------------------------

  private async runWake(vmId: string, port: number, subdomain: string, flight: Flight): Promise<Woken> {
    const { config, database, directory, log, metrics } = this.deps;
    const started = performance.now();
    const deadline = Date.now() + config.wakeTimeoutMs;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new WakeTimeoutError()), config.wakeTimeoutMs);
    const onClose = () => ac.abort(new ShuttingDownError());
    this.closers.add(onClose);
    let outcome: WakeOutcome = "failed";
    let failure: Failure | undefined;
    let woke = false;
    this.history.began(vmId);
    try {
      if (this.closed) throw new ShuttingDownError();
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
      await waitForPort(vm.guest_ip, port, { deadline, signal: ac.signal });
      let ready = vm;
      if (vm.state === "running") directory.record(vm);
      else ready = (await directory.refreshOne(vmId).catch(() => undefined)) ?? vm;
      // Woken is in use: the idle clock starts again now, even before the first answer.
      this.deps.activity.touch(vmId);
      outcome = "ok";
      return { vm: ready, port, deadline };
    } catch (err) {
      failure = this.wakeFailure(err, vmId);
      outcome = failure.status === 504 ? "timeout" : "failed";
      throw new FailureError(failure);
    } finally {
      clearTimeout(timer);
      this.closers.delete(onClose);
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

  /** No key may act on the VM: retrying does not help until its owner calls, so no Retry-After. */
  private noAccess(err: VmAccessError, vmId: string): Failure {
    this.deps.log.warn("vm cannot be reached: no key may act on it", { vm: vmId, reason: err.reason });
    return { status: 503, error: err.message };
  }

  /** The public answer for a failed wake. */
  wakeFailure(err: unknown, vmId: string): Failure {
    if (err instanceof FailureError) return err.failure;
    if (err instanceof VmAccessError) return this.noAccess(err, vmId);
    if (err instanceof ShuttingDownError) return SHUTTING_DOWN;
    if (err instanceof WakeTimeoutError || err instanceof ReadyTimeoutError || err instanceof LockTimeoutError) {
      return { status: 504, error: this.timeoutText };
    }
    if (err instanceof WakeError) {
      if (err.reason === "timeout") return { status: 504, error: this.timeoutText };
      if (err.reason === "not_found") return { status: 502, error: "vm not found" };
      if (err.reason === "unsupported") return { status: 503, error: err.message };
      return { status: 503, error: "failed to wake vm", detail: err.message };
    }
    if (err instanceof PlatformUnavailableError) return { status: 503, error: "failed to wake vm", detail: "vm platform unavailable" };
    this.deps.log.error("wake failed unexpectedly", { vm: vmId, err });
    return { status: 503, error: "failed to wake vm", detail: "internal error" };
  }

  /** The wake timeout's text (also used when a replay runs out of time). */
  get timeoutMessage(): string {
    return this.timeoutText;
  }

  /** Answers every held request (503) and stops running wakes. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort(new ShuttingDownError());
    for (const c of [...this.closers]) c();
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
