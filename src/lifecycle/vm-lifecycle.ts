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
import type { RouteRow } from "../db/schema.ts";
import { cancelIdleSleep } from "../db/sleeps.repo.ts";
import { SLEEPING_STATES, type Vm } from "../vms/platform.ts";
import { BodyTooLargeError, bodyTooLargeMessage, ClientGoneError, HeldBytes } from "./held-bytes.ts";
import type { WakeMetrics } from "./metrics.ts";
import { HoldCounter, SingleFlight } from "./single-flight.ts";
import { FailureError, SHUTTING_DOWN, ShuttingDownError, type Failure } from "./failure.ts";
import { WakeFlights, type WakeFlightDeps, type Woken } from "./wake-flight.ts";
import { LifecycleAnswers } from "./answers.ts";
import { AddressGuard } from "./address-guard.ts";

/** The lifecycle is built from what its wake flights are built from. */
export type LifecycleDeps = WakeFlightDeps;

/** Pause before a VM that did not take a connection is tried again. */
const UNREACHABLE_RETRY_MS = 100;

/** What to do with a request for a routed VM. */
export type Admission = { kind: "forward"; vm: Vm } | { kind: "hold" } | { kind: "fail"; failure: Failure };

/** What to do with a request for `route`, from its VM's known state alone (no sleep in progress). */
export function decide(route: RouteRow, vm: Vm): Admission {
  if (vm.state === "running") return { kind: "forward", vm };
  // A VM already starting is waited for like a wake (the flight sees it and does not restart it).
  if (vm.state === "starting") return { kind: "hold" };
  if (SLEEPING_STATES.includes(vm.state)) {
    if (route.autoWake) return { kind: "hold" };
    return { kind: "fail", failure: { status: 503, error: `vm is ${vm.state} and auto-wake is disabled` } };
  }
  return { kind: "fail", failure: { status: 503, error: `vm is in state "${vm.state}", not proxying` } };
}

export type WaitOutcome =
  | { kind: "ready"; vm: Vm; body: Buffer | undefined; deadline: number }
  | { kind: "failure"; failure: Failure }
  | { kind: "gone" }
  | { kind: "page" }
  | { kind: "full" };

export class VmLifecycle {
  private readonly holds: HoldCounter;
  private readonly refreshes = new SingleFlight<Vm | undefined>();
  private readonly closers = new Set<() => void>();
  private readonly closing = new AbortController();
  private readonly answers: LifecycleAnswers;
  private readonly flights: WakeFlights;
  private closed = false;

  /** Request bodies held in memory while their VMs wake, under one ceiling per process. */
  readonly heldBodies: HeldBytes;
  /** Refuses VMs whose guest address another running VM claims. */
  readonly addresses: AddressGuard;

  constructor(private readonly deps: LifecycleDeps) {
    this.holds = new HoldCounter(deps.config.wakeMaxWaiters, (n) => deps.metrics.waiters(n));
    this.heldBodies = new HeldBytes(deps.config.wakeMaxBuffered, deps.metrics.registry);
    this.answers = new LifecycleAnswers(deps.config, deps.log);
    this.addresses = new AddressGuard(deps.directory, deps.log, deps.metrics.registry);
    const owner = this;
    this.flights = new WakeFlights(
      deps,
      {
        get closed() {
          return owner.closed;
        },
        closers: this.closers,
        signal: this.closing.signal,
        timeoutText: this.answers.timeoutText,
      },
      (err, vmId) => this.wakeFailure(err, vmId),
      this.addresses,
    );
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
    return this.answers.platformDown(err, vmId);
  }

  /** The public answer for a failed wake. */
  wakeFailure(err: unknown, vmId: string): Failure {
    return this.answers.wakeFailure(err, vmId);
  }

  /**
   * A VM known as running did not take a connection: asks the platform what it really is. When it
   * still runs with no sleep under way, a refusal (`refused`) is the app's own (`app`), while a
   * connect that went nowhere (`unreachable`: no route, or no answer in time) is tried again after
   * a short pause (`retry`): on Hatch a VM being snapshotted reads `running` while it is a black
   * hole, and a guest may just be slow to accept. `hold`: it is going to sleep or asleep, and the
   * request waits for the wake that follows; `fail`: the answer to give.
   */
  async whenNotReached(
    route: RouteRow,
    how: "refused" | "unreachable",
  ): Promise<{ kind: "app" } | { kind: "retry"; vm: Vm } | { kind: "hold"; vm: Vm } | { kind: "fail"; failure: Failure }> {
    let live: Vm | undefined;
    try {
      live = await this.refresh(route.vmId);
    } catch (err) {
      return { kind: "fail", failure: this.platformDown(err, route.vmId) };
    }
    if (!live) return { kind: "fail", failure: { status: 502, error: "vm not found" } };
    const next = live.state === "running" && !this.sleepInProgress(route.vmId) ? ({ kind: "forward", vm: live } as const) : await this.admit(route, live);
    if (next.kind === "fail") return next;
    if (next.kind === "hold") return { kind: "hold", vm: live };
    if (how === "refused") return { kind: "app" };
    await new Promise((r) => setTimeout(r, UNREACHABLE_RETRY_MS));
    return { kind: "retry", vm: next.vm };
  }

  /**
   * What to do with a request for `route` whose VM is known as `vm`. A request that meets a
   * draining idle sleep cancels it and is forwarded; any other sleep in progress holds it (it is
   * served after the wake that follows), except on a route without auto-wake, which is forwarded
   * while the VM still runs.
   */
  async admit(route: RouteRow, vm: Vm): Promise<Admission> {
    const sleep = this.deps.sleeps.get(route.vmId);
    if (!sleep) return decide(route, vm);
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

  /** True when `vm` came up within `withinMs` (see WakeFlights.recentlyUp). */
  recentlyUp(vmId: string, vm: Vm, withinMs?: number): boolean {
    return this.flights.recentlyUp(vmId, vm, withinMs);
  }

  /** How long the wake of `vmId` under way here has run, and its last wake durations (ms). */
  wakeProgress(vmId: string): { elapsedMs: number | undefined; recentMs: readonly number[] } {
    return this.flights.progress(vmId);
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
    return this.answers.tooManyWaiters(vmId);
  }

  /** The VM of a finished flight, with `port` answering too (see WakeFlights.ready). */
  ready(vmId: string, port: number, subdomain: string): Promise<Woken> {
    return this.flights.ready(vmId, port, subdomain);
  }

  /** The wake timeout's text (also used when a replay runs out of time). */
  get timeoutMessage(): string {
    return this.answers.timeoutText;
  }

  /** Answers every held request (503) and stops running wakes. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort(new ShuttingDownError());
    for (const c of [...this.closers]) c();
  }
}
