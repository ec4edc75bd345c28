/**
 * The wake proxy: Host → route → VM; forwards to running VMs, wakes sleeping ones once (however
 * many requests wait, across replicas) and replays every held request when the port answers.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { Agent, createServer, STATUS_CODES, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Registry } from "prom-client";
import { formatDuration, type Config, type ListenAddr } from "../config.ts";
import { LockTimeoutError, type Database } from "../db/client.ts";
import type { RouteRow } from "../db/schema.ts";
import { listen, type Listening } from "../listen.ts";
import type { Logger } from "../log.ts";
import { PlatformUnavailableError, SLEEPING_STATES, WakeError, type Vm, type VmDirectory, type VmPlatform } from "../vms/platform.ts";
import { BodyTooLargeError, ClientGoneError, bodyTooLargeMessage, declaredLength, hasNoBody, readBody } from "./body.ts";
import { forwardRequest, forwardUpgrade, type ForwardResult, type Target, type UpgradeResult } from "./forward.ts";
import { upstreamRequestHeaders, WAKE_SECRET_HEADER } from "./headers.ts";
import { createWakeMetrics, type WakeOutcome } from "./metrics.ts";
import { WAKING_PAGE_HEADERS, wakingPage, wantsWakingPage } from "./page.ts";
import { ReadyTimeoutError, waitForPort } from "./ready.ts";
import { createRouteCache, isValidLabel, subdomainOf } from "./resolve.ts";
import { HoldCounter, SingleFlight, type Flight } from "./single-flight.ts";

export interface WakeDeps {
  config: Config;
  database: Database;
  platform: VmPlatform;
  directory: VmDirectory;
  log: Logger;
}

export interface WakeProxyOptions {
  /** Serving HATCH_PROXY_ADDR directly (no Traefik in front): no wake secret, X-Forwarded-* not trusted. */
  embedded: boolean;
  /** How long a route lookup is trusted before a background re-read (NOTIFY clears it sooner). Default 10 s. */
  routeCacheTtlMs?: number;
  /** Connect timeout to a running VM's port before answering 504. */
  connectTimeoutMs?: number;
}

export interface WakeProxy {
  handleRequest(req: IncomingMessage, res: ServerResponse): void;
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** The proxy's own metrics registry (the API merges it into /metrics). */
  readonly registry: Registry;
  /** Stops listeners and timers; held requests get 503. */
  close(): Promise<void>;
}

/** A public answer that is not the VM's: status and JSON body `{"error": …}`. */
interface Failure {
  status: number;
  error: string;
  detail?: string | undefined;
  headers?: Record<string, string> | undefined;
}

class FailureError extends Error {
  constructor(readonly failure: Failure) {
    super(failure.error);
  }
}
class WakeTimeoutError extends Error {}
class ShuttingDownError extends Error {}

interface Routed {
  route: RouteRow;
  vm: Vm;
  subdomain: string;
}
type Decision = { kind: "fail"; failure: Failure } | ({ kind: "forward" } & Routed) | ({ kind: "wake" } & Routed);

/** What a wake flight hands its waiters. */
interface Woken {
  vm: Vm;
  /** The port the flight probed (other ports of the VM are probed by their own requests). */
  port: number;
  /** When the flight gives up (Date.now() scale); late joiners share it. */
  deadline: number;
}

type WaitOutcome =
  | { kind: "ready"; vm: Vm; body: Buffer | undefined; deadline: number }
  | { kind: "failure"; failure: Failure }
  | { kind: "gone" }
  | { kind: "page" };

const SHUTTING_DOWN: Failure = { status: 503, error: "proxy is shutting down", headers: { "retry-after": "1" } };
/** Spacing of forward retries after readiness when the port still refuses (the app may be rebinding). */
const REPLAY_RETRY_MS = 25;
/** Requests counted as 499 in metrics: the client left before an answer (nginx's convention). */
const CLIENT_GONE = 499;

/** Builds the wake proxy around its dependencies; `embedded` = no Traefik in front. */
export function createWakeProxy(deps: WakeDeps, opts: WakeProxyOptions): WakeProxy {
  const { config, database, platform, directory, log } = deps;
  const metrics = createWakeMetrics();
  const holds = new HoldCounter(config.wakeMaxWaiters, (n) => metrics.waiters(n));
  const wakes = new SingleFlight<Woken>();
  const probes = new SingleFlight<number>();
  const refreshes = new SingleFlight<Vm | undefined>();
  const routes = createRouteCache(database, { ttlMs: opts.routeCacheTtlMs ?? 10_000, log });
  // A burst of replays (1,000 held requests) must not open 1,000 connections at once: the guest's
  // accept backlog would drop SYNs and cost a 1 s retransmit. Requests past the cap queue in the
  // agent and reuse kept-alive sockets.
  const agent = new Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 256, scheduling: "lifo" });
  const connectTimeoutMs = opts.connectTimeoutMs ?? 5000;
  const secretHash = !opts.embedded && config.wakeSecret ? sha256(config.wakeSecret) : undefined;
  const timeoutText = `vm did not become ready within ${formatDuration(config.wakeTimeoutMs)} (HATCH_PROXY_WAKE_TIMEOUT)`;
  const debug = config.logLevel === "debug";
  // Everyone who must hear about close(): held requests and running wakes.
  const closers = new Set<() => void>();
  const tunnels = new Set<Duplex>();
  const closing = new AbortController();
  let closed = false;

  const refresh = (vmId: string) => refreshes.run(vmId, () => directory.refreshOne(vmId));
  const headersFor = (req: IncomingMessage, upgrade = false) => upstreamRequestHeaders(req, { trustForwarded: !opts.embedded, upgrade });

  function decide(route: RouteRow, vm: Vm, subdomain: string): Decision {
    if (vm.state === "running") return { kind: "forward", route, vm, subdomain };
    // A VM already starting is waited for like a wake (the flight sees it and does not restart it).
    if (vm.state === "starting") return { kind: "wake", route, vm, subdomain };
    if (SLEEPING_STATES.includes(vm.state)) {
      if (route.autoWake) return { kind: "wake", route, vm, subdomain };
      return { kind: "fail", failure: { status: 503, error: `vm is ${vm.state} and auto-wake is disabled` } };
    }
    return { kind: "fail", failure: { status: 503, error: `vm is in state "${vm.state}", not proxying` } };
  }

  async function resolve(req: IncomingMessage): Promise<Decision> {
    if (closed) return { kind: "fail", failure: SHUTTING_DOWN };
    if (secretHash) {
      const given = req.headers[WAKE_SECRET_HEADER];
      if (typeof given !== "string" || !timingSafeEqual(sha256(given), secretHash)) {
        return { kind: "fail", failure: { status: 403, error: "missing or invalid X-Hatch-Wake-Secret header" } };
      }
    }
    const host = subdomainOf(req.headers.host, config.baseDomain);
    if (!host.ok) return { kind: "fail", failure: { status: 400, error: host.message } };
    const sub = host.subdomain;
    const noRoute: Decision = { kind: "fail", failure: { status: 404, error: `no route for subdomain ${JSON.stringify(sub)}` } };
    if (!isValidLabel(sub)) return noRoute;
    let route: RouteRow | undefined;
    try {
      route = await routes.get(sub);
    } catch (err) {
      log.error("route lookup failed", { subdomain: sub, err });
      return { kind: "fail", failure: { status: 503, error: "route lookup failed", headers: { "retry-after": "1" } } };
    }
    if (!route) return noRoute;
    let vm = directory.peek(route.vmId);
    if (!vm) {
      try {
        vm = await refresh(route.vmId);
      } catch (err) {
        return { kind: "fail", failure: platformDown(err, route.vmId) };
      }
    }
    if (!vm) return { kind: "fail", failure: { status: 502, error: "vm not found" } };
    return decide(route, vm, sub);
  }

  function platformDown(err: unknown, vmId: string): Failure {
    log.warn("vm platform unavailable", { vm: vmId, err });
    return { status: 503, error: "vm platform unavailable", headers: { "retry-after": "1" } };
  }

  // ---- the wake flight (one per VM, shared by every waiter) -------------------------------------

  async function runWake(vmId: string, port: number, subdomain: string, flight: Flight): Promise<Woken> {
    const started = performance.now();
    const deadline = Date.now() + config.wakeTimeoutMs;
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new WakeTimeoutError()), config.wakeTimeoutMs);
    const onClose = () => ac.abort(new ShuttingDownError());
    closers.add(onClose);
    let outcome: WakeOutcome = "failed";
    let failure: Failure | undefined;
    let woke = false;
    try {
      if (closed) throw new ShuttingDownError();
      const vm = await abortable(
        database.withLock(`wake:${vmId}`, Math.max(1, deadline - Date.now()), async () => {
          if (ac.signal.aborted) throw ac.signal.reason;
          // Re-read inside the lock: another replica may have woken it while we waited.
          const live = await directory.refreshOne(vmId);
          if (!live) throw new FailureError({ status: 502, error: "vm not found" });
          if (live.state === "running" || live.state === "starting") return live;
          if (!SLEEPING_STATES.includes(live.state)) throw new FailureError({ status: 503, error: `vm is in state "${live.state}", not proxying` });
          woke = true;
          return await wakeOnPlatform(vmId, deadline, ac.signal);
        }),
        ac.signal,
      );
      await waitForPort(vm.guest_ip, port, { deadline, signal: ac.signal });
      let ready = vm;
      if (vm.state === "running") directory.record(vm);
      else ready = (await directory.refreshOne(vmId).catch(() => undefined)) ?? vm;
      outcome = "ok";
      return { vm: ready, port, deadline };
    } catch (err) {
      failure = wakeFailure(err, vmId);
      outcome = failure.status === 504 ? "timeout" : "failed";
      throw new FailureError(failure);
    } finally {
      clearTimeout(timer);
      closers.delete(onClose);
      const ms = performance.now() - started;
      metrics.wake(outcome, ms / 1000);
      const fields = { vm: vmId, subdomain, duration_ms: Math.round(ms), waiters: flight.joined, outcome, woke };
      if (failure) log.warn("vm wake", { ...fields, error: failure.error, detail: failure.detail });
      else log.info("vm wake", fields);
    }
  }

  async function wakeOnPlatform(vmId: string, deadline: number, signal: AbortSignal): Promise<Vm> {
    try {
      return await abortable(platform.wake(vmId, { timeoutMs: Math.max(1, deadline - Date.now()), signal }), signal);
    } catch (err) {
      // Someone else (another replica, the API) restored it first: fine if it is coming up.
      if (err instanceof WakeError && err.reason === "conflict") {
        const again = await directory.refreshOne(vmId);
        if (again && (again.state === "running" || again.state === "starting")) return again;
      }
      throw err;
    }
  }

  function wakeFailure(err: unknown, vmId: string): Failure {
    if (err instanceof FailureError) return err.failure;
    if (err instanceof ShuttingDownError) return SHUTTING_DOWN;
    if (err instanceof WakeTimeoutError || err instanceof ReadyTimeoutError || err instanceof LockTimeoutError) {
      return { status: 504, error: timeoutText };
    }
    if (err instanceof WakeError) {
      if (err.reason === "timeout") return { status: 504, error: timeoutText };
      if (err.reason === "not_found") return { status: 502, error: "vm not found" };
      if (err.reason === "unsupported") return { status: 503, error: err.message };
      return { status: 503, error: "failed to wake vm", detail: err.message };
    }
    if (err instanceof PlatformUnavailableError) return { status: 503, error: "failed to wake vm", detail: "vm platform unavailable" };
    log.error("wake failed unexpectedly", { vm: vmId, err });
    return { status: 503, error: "failed to wake vm", detail: "internal error" };
  }

  /** The VM of a finished flight, with `port` answering too (probed once per address for other ports). */
  async function readyFor(vmId: string, port: number, subdomain: string): Promise<Woken> {
    const woken = await wakes.run(vmId, (flight) => runWake(vmId, port, subdomain, flight));
    if (woken.port === port) return woken;
    const key = `${woken.vm.guest_ip}:${port}`;
    try {
      await probes.run(key, () => waitForPort(woken.vm.guest_ip, port, { deadline: woken.deadline, signal: closing.signal }));
    } catch {
      throw new FailureError({ status: 504, error: timeoutText });
    }
    return { ...woken, port };
  }

  /**
   * Holds one client until its VM is ready (or the wake fails, the client leaves, the page timer
   * fires, or the proxy closes). The waiter slot is released on every path.
   */
  async function hold(
    d: Extract<Decision, { kind: "wake" }>,
    onGone: (cb: () => void) => () => void,
    body: Promise<Buffer> | undefined,
    pageAfterMs: number,
  ): Promise<WaitOutcome | { kind: "full" }> {
    const vmId = d.route.vmId;
    const release = holds.acquire(vmId);
    if (!release) return { kind: "full" };
    const work = Promise.all([readyFor(vmId, d.route.targetPort, d.subdomain), body]);
    return new Promise<WaitOutcome>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      let stopGone = () => {};
      const done = (o: WaitOutcome) => {
        if (timer) clearTimeout(timer);
        stopGone();
        closers.delete(onClose);
        release();
        resolve(o);
      };
      const onClose = () => done({ kind: "failure", failure: SHUTTING_DOWN });
      closers.add(onClose);
      stopGone = onGone(() => done({ kind: "gone" }));
      if (pageAfterMs > 0) timer = setTimeout(() => done({ kind: "page" }), pageAfterMs);
      work.then(
        ([w, b]) => done({ kind: "ready", vm: w.vm, body: b, deadline: w.deadline }),
        (err: unknown) => {
          if (err instanceof ClientGoneError) done({ kind: "gone" });
          else if (err instanceof BodyTooLargeError) done({ kind: "failure", failure: { status: 413, error: bodyTooLargeMessage(err.limit) } });
          else done({ kind: "failure", failure: err instanceof FailureError ? err.failure : wakeFailure(err, vmId) });
        },
      );
    });
  }

  // ---- plain HTTP ----------------------------------------------------------------------------

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const d = await resolve(req);
    if (d.kind === "fail") return sendFailure(res, d.failure);
    if (d.kind === "forward") return forwardRunning(req, res, d, false);
    return wakeAndForward(req, res, d, performance.now());
  }

  async function forwardRunning(req: IncomingMessage, res: ServerResponse, d: Extract<Decision, { kind: "forward" }>, retried: boolean): Promise<void> {
    const port = d.route.targetPort;
    const target: Target = { host: d.vm.guest_ip, port };
    const started = performance.now();
    const r = await forwardRequest(req, res, target, { agent, headers: headersFor(req), connectTimeoutMs, responseTimeoutMs: config.wakeTimeoutMs });
    if (r.ok) return countForwarded(req, d, r.status, started);
    if (r.reason === "reset" && r.reused && !retried && hasNoBody(req) && isIdempotent(req.method)) {
      // A kept-alive socket the VM had closed (it may have just gone to sleep): one fresh try.
      return forwardRunning(req, res, d, true);
    }
    if (r.reason !== "refused" && r.reason !== "reset") return sendForwardFailure(res, r, port);
    if (r.reason === "reset" && !(r.reused && hasNoBody(req))) return sendForwardFailure(res, r, port);
    // The cached state said running but nothing listens: ask the platform what the VM really is.
    let live: Vm | undefined;
    try {
      live = await refresh(d.route.vmId);
    } catch (err) {
      return sendFailure(res, platformDown(err, d.route.vmId));
    }
    if (!live) return sendFailure(res, { status: 502, error: "vm not found" });
    if (live.state === "running") return sendForwardFailure(res, r, port);
    const next = decide(d.route, live, d.subdomain);
    if (next.kind === "fail") return sendFailure(res, next.failure);
    if (next.kind === "forward") return sendForwardFailure(res, r, port);
    return wakeAndForward(req, res, next, started);
  }

  async function wakeAndForward(req: IncomingMessage, res: ServerResponse, d: Extract<Decision, { kind: "wake" }>, waitStart: number): Promise<void> {
    const declared = declaredLength(req);
    if (declared !== undefined && declared > config.wakeMaxBody) {
      return sendTooLarge(req, res, { status: 413, error: bodyTooLargeMessage(config.wakeMaxBody) });
    }
    const body = hasNoBody(req) ? undefined : readBody(req, config.wakeMaxBody);
    body?.catch(() => {});
    const pageAfter = config.wakePageAfterMs > 0 && wantsWakingPage(req) ? config.wakePageAfterMs : 0;
    const onGone = (cb: () => void) => {
      // The client may have left while the route was being resolved: 'close' has already fired.
      if (res.destroyed) {
        queueMicrotask(cb);
        return () => {};
      }
      const listener = () => {
        if (!res.writableFinished) cb();
      };
      res.once("close", listener);
      return () => res.off("close", listener);
    };
    const o = await hold(d, onGone, body, pageAfter);
    switch (o.kind) {
      case "full":
        return sendFailure(res, tooManyWaiters(d.route.vmId));
      case "gone":
        metrics.request(CLIENT_GONE);
        return;
      case "page":
        return sendPage(res, d.subdomain);
      case "failure":
        if (o.failure.status === 413) return sendTooLarge(req, res, o.failure);
        return sendFailure(res, { ...o.failure, headers: { ...o.failure.headers, ...coldHeaders(waitStart) } });
      case "ready":
        return replay(req, res, d, o, waitStart);
    }
  }

  async function replay(
    req: IncomingMessage,
    res: ServerResponse,
    d: Extract<Decision, { kind: "wake" }>,
    o: Extract<WaitOutcome, { kind: "ready" }>,
    waitStart: number,
  ): Promise<void> {
    const port = d.route.targetPort;
    const target: Target = { host: o.vm.guest_ip, port };
    const headers = headersFor(req);
    const body = o.body ?? Buffer.alloc(0);
    for (let attempt = 0; ; attempt++) {
      const extra = ["Server-Timing", `wake;dur=${Math.round(performance.now() - waitStart)}`, "X-Hatch-Cold-Start", "1"];
      const r: ForwardResult = await forwardRequest(req, res, target, {
        agent,
        headers,
        body,
        extraResponseHeaders: extra,
        connectTimeoutMs,
        responseTimeoutMs: config.wakeTimeoutMs,
      });
      if (r.ok) return countForwarded(req, { vm: o.vm, subdomain: d.subdomain }, r.status, waitStart);
      // Only a refused connection is retried: no byte reached the VM, so nothing can run twice.
      const again = r.reason === "refused" || (r.reason === "reset" && r.reused && attempt === 0 && isIdempotent(req.method) && body.length === 0);
      if (!again || Date.now() + REPLAY_RETRY_MS >= o.deadline || closed) {
        return sendForwardFailure(res, r, port, coldHeaders(waitStart));
      }
      await new Promise((r) => setTimeout(r, REPLAY_RETRY_MS));
    }
  }

  function countForwarded(req: IncomingMessage, d: { vm: Vm; subdomain: string }, status: number, started: number) {
    metrics.request(status);
    if (debug) log.debug("proxied", { vm: d.vm.id, subdomain: d.subdomain, method: req.method, status, ms: Math.round(performance.now() - started) });
  }

  function tooManyWaiters(vmId: string): Failure {
    return {
      status: 503,
      error: `too many requests waiting for vm ${vmId} to wake (HATCH_WAKE_MAX_WAITERS=${config.wakeMaxWaiters})`,
      headers: { "retry-after": "2" },
    };
  }

  function sendForwardFailure(res: ServerResponse, r: Exclude<ForwardResult | UpgradeResult, { ok: true }>, port: number, headers?: Record<string, string>) {
    if (r.reason === "client-gone") {
      metrics.request(CLIENT_GONE);
      return;
    }
    sendFailure(res, { ...forwardFailure(r, port), headers });
  }

  function forwardFailure(r: Exclude<ForwardResult | UpgradeResult, { ok: true }>, port: number): Failure {
    switch (r.reason) {
      case "refused":
        return { status: 502, error: `vm port ${port} refused the connection` };
      case "reset":
        return { status: 502, error: `vm port ${port} closed the connection before answering` };
      case "timeout":
        return r.phase === "connect"
          ? { status: 504, error: `vm port ${port} did not accept the connection within ${formatDuration(connectTimeoutMs)}` }
          : { status: 504, error: `vm did not answer within ${formatDuration(config.wakeTimeoutMs)} (HATCH_PROXY_WAKE_TIMEOUT)` };
      case "error":
        log.warn("forward failed", { port, err: r.error });
        return { status: 502, error: `vm port ${port} could not be reached` };
      case "client-gone":
        return { status: CLIENT_GONE, error: "client closed the connection" };
    }
  }

  function sendFailure(res: ServerResponse, f: Failure): void {
    metrics.request(f.status);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const text = JSON.stringify(f.detail ? { error: f.error, detail: f.detail } : { error: f.error });
    res.writeHead(f.status, { ...f.headers, "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  }

  /**
   * 413 while the client may still be uploading: the answer goes out at once, the rest of the body
   * is read and discarded (bounded in time), and only then is the connection closed, so the
   * client's kernel does not reset it and lose the answer.
   */
  function sendTooLarge(req: IncomingMessage, res: ServerResponse, f: Failure): void {
    metrics.request(413);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const text = JSON.stringify({ error: f.error });
    res.writeHead(413, { "content-type": "application/json", "content-length": Buffer.byteLength(text), connection: "close" });
    res.write(text);
    const end = () => {
      clearTimeout(timer);
      res.end();
    };
    const timer = setTimeout(end, 2000);
    timer.unref();
    if (req.readableEnded) return end();
    req.once("end", end);
    req.once("close", end);
    req.resume();
  }

  function sendPage(res: ServerResponse, subdomain: string): void {
    metrics.request(503);
    const html = wakingPage(subdomain);
    res.writeHead(503, { ...WAKING_PAGE_HEADERS, "content-length": Buffer.byteLength(html) });
    res.end(html);
  }

  // ---- upgrades (WebSockets) -----------------------------------------------------------------

  async function serveUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const d = await resolve(req);
    if (d.kind === "fail") return rawFailure(socket, d.failure);
    let vm = d.vm;
    let extra: string[] | undefined;
    let deadline = Date.now() + config.wakeTimeoutMs;
    let waitStart = performance.now();
    let decision: Decision = d;
    for (let attempt = 0; ; attempt++) {
      if (decision.kind === "fail") return rawFailure(socket, decision.failure, extra);
      if (decision.kind === "wake") {
        const onGone = (cb: () => void) => {
          if (socket.destroyed) {
            queueMicrotask(cb);
            return () => {};
          }
          socket.once("close", cb);
          return () => socket.off("close", cb);
        };
        const o = await hold(decision, onGone, undefined, 0);
        if (o.kind === "full") return rawFailure(socket, tooManyWaiters(decision.route.vmId));
        if (o.kind === "gone") {
          metrics.request(CLIENT_GONE);
          return;
        }
        if (o.kind !== "ready") return rawFailure(socket, o.kind === "failure" ? o.failure : SHUTTING_DOWN, coldList(waitStart));
        vm = o.vm;
        deadline = o.deadline;
        extra = coldList(waitStart);
        decision = { ...decision, kind: "forward", vm };
      }
      const port = decision.route.targetPort;
      const r = await forwardUpgrade(req, socket, head, { host: vm.guest_ip, port }, {
        headers: headersFor(req, true),
        extraResponseHeaders: extra,
        connectTimeoutMs,
        responseTimeoutMs: config.wakeTimeoutMs,
      });
      if (r.ok) {
        metrics.request(r.status);
        if (r.status === 101) track(socket);
        return;
      }
      if (r.reason === "client-gone") {
        metrics.request(CLIENT_GONE);
        return;
      }
      if (r.reason !== "refused") return rawFailure(socket, forwardFailure(r, port), extra);
      if (extra) {
        // Refused right after readiness: retry within the wake's deadline.
        if (Date.now() + REPLAY_RETRY_MS >= deadline || closed) return rawFailure(socket, forwardFailure(r, port), extra);
        await new Promise((r) => setTimeout(r, REPLAY_RETRY_MS));
        continue;
      }
      let live: Vm | undefined;
      try {
        live = await refresh(decision.route.vmId);
      } catch (err) {
        return rawFailure(socket, platformDown(err, decision.route.vmId));
      }
      if (!live) return rawFailure(socket, { status: 502, error: "vm not found" });
      if (live.state === "running" || attempt > 0) return rawFailure(socket, forwardFailure(r, port));
      decision = decide(decision.route, live, decision.subdomain);
      waitStart = performance.now();
    }
  }

  function track(socket: Duplex) {
    tunnels.add(socket);
    socket.once("close", () => tunnels.delete(socket));
  }

  function rawFailure(socket: Duplex, f: Failure, extra?: string[]): void {
    metrics.request(f.status);
    if (socket.destroyed) return;
    const text = JSON.stringify(f.detail ? { error: f.error, detail: f.detail } : { error: f.error });
    const lines = [`HTTP/1.1 ${f.status} ${STATUS_CODES[f.status] ?? ""}`, "Content-Type: application/json", `Content-Length: ${Buffer.byteLength(text)}`, "Connection: close"];
    for (const [k, v] of Object.entries(f.headers ?? {})) lines.push(`${k}: ${v}`);
    if (extra) for (let i = 0; i < extra.length; i += 2) lines.push(`${extra[i]}: ${extra[i + 1]}`);
    socket.end(lines.join("\r\n") + "\r\n\r\n" + text);
  }

  function coldHeaders(waitStart: number): Record<string, string> {
    return { "server-timing": `wake;dur=${Math.round(performance.now() - waitStart)}`, "x-hatch-cold-start": "1" };
  }
  function coldList(waitStart: number): string[] {
    return ["Server-Timing", `wake;dur=${Math.round(performance.now() - waitStart)}`, "X-Hatch-Cold-Start", "1"];
  }

  return {
    registry: metrics.registry,
    handleRequest(req, res) {
      serve(req, res).catch((err: unknown) => {
        log.error("proxy error", { err, url: req.url });
        sendFailure(res, { status: 502, error: "proxy error" });
      });
    },
    handleUpgrade(req, socket, head) {
      socket.on("error", () => socket.destroy());
      serveUpgrade(req, socket, head).catch((err: unknown) => {
        log.error("proxy upgrade error", { err, url: req.url });
        rawFailure(socket, { status: 502, error: "proxy error" });
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      closing.abort(new ShuttingDownError());
      for (const c of [...closers]) c();
      for (const s of tunnels) s.destroy();
      agent.destroy();
      await routes.close();
    },
  };
}

/** Starts an HTTP server for the proxy on `addr` (port 0 = any free port). */
export function startWakeServer(proxy: WakeProxy, addr: ListenAddr): Promise<Listening> {
  // Kept-alive connections outlive Traefik's idle timeout (90 s), so Traefik never reuses one this
  // server has just closed.
  const server = createServer({ keepAliveTimeout: 95_000 }, proxy.handleRequest);
  server.on("upgrade", proxy.handleUpgrade);
  // A deep accept queue: a thousand clients arriving at once for a sleeping VM is the point.
  // Requests still running at close get a second to finish, then their connections are cut.
  return listen(server, addr, { backlog: 4096, graceMs: 1000 });
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

function isIdempotent(method: string | undefined): boolean {
  return method === "GET" || method === "HEAD" || method === "OPTIONS";
}

/** Rejects with the signal's reason when it aborts first; the underlying work is left to finish. */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
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
