/**
 * Plain HTTP requests, once resolved: ask the lifecycle, then forward to the running VM or hold
 * until it is woken and replay (buffered body). Everything about the VM's state lives in the
 * lifecycle; this file only moves bytes and writes answers.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Vm } from "../vms/platform.ts";
import { bodyTooLargeMessage, HeldBytesFullError } from "../lifecycle/held-bytes.ts";
import { WakeAnswers } from "./answers.ts";
import { declaredLength, hasNoBody, readBody } from "./body.ts";
import { forwardRequest, type ForwardOptions, type ForwardResult, type Target, type UpgradeResult } from "./forward.ts";
import { wantsWakingPage } from "./page.ts";
import { probeOnce } from "../lifecycle/ready.ts";
import { CLIENT_GONE, coldHeaders, coldList, dropPooled, forwardFailure, isIdempotent, REPLAY_RETRY_MS, type ResponderDeps, type Resolved, type Routed } from "./proxy-context.ts";

/** Calls back when the client leaves before its answer is done (at once when it already has). */
function goneWatch(res: ServerResponse): (cb: () => void) => () => void {
  return (cb) => {
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
}

/** How long a forwarded request waits for an answer before the VM is checked (a VM paused for a snapshot never answers). */
const STALE_AFTER_MS = 1000;
/** How long that check's fresh connect may take. */
const STALE_PROBE_MS = 500;
/** Tries of a bodyless GET or HEAD whose connection the VM reset (a sleep and wake can cut it more than once). */
const RESET_TRIES = 3;

/**
 * A forwarded request (or replay) that hears nothing for STALE_AFTER_MS has its VM checked with a
 * fresh connect: a VM the platform paused for a snapshot never answers, and its connections hang.
 */
function staleCheck(host: string, port: number): ForwardOptions["stale"] {
  return { afterMs: STALE_AFTER_MS, alive: () => probeOnce(host, port, STALE_PROBE_MS) };
}

/** The handler for a resolved plain HTTP request; never rejects (errors become answers). */
export function createHttpResponder(ctx: ResponderDeps): (req: IncomingMessage, res: ServerResponse, resolved: Resolved) => Promise<void> {
  const { config, lifecycle, metrics } = ctx;
  const answers = new WakeAnswers(metrics);
  const sendFailure = answers.failure.bind(answers);
  const sendTooLarge = answers.tooLarge.bind(answers);
  const sendRetry = answers.retry.bind(answers);

  async function serve(req: IncomingMessage, res: ServerResponse, r: Resolved): Promise<void> {
    if (r.kind === "fail") return sendFailure(res, r.failure);
    if (r.kind === "api") return forwardToApi(req, res, r.target);
    const a = await lifecycle.admit(r.route, r.vm);
    if (a.kind === "fail") return sendFailure(res, a.failure);
    if (a.kind === "forward") {
      // Traefik's direct router failed a moment ago but the VM runs: if it has just come up (woken
      // by another request), send the client back to it; otherwise the app answered 502/504
      // itself, and a redirect could loop: pass the app's answer on.
      if (r.fallback && lifecycle.recentlyUp(r.route.vmId, a.vm)) return sendRetry(res, req.url ?? "/");
      return forwardRunning(req, res, { ...r, vm: a.vm }, false);
    }
    return wakeAndForward(req, res, r, performance.now());
  }

  /** Counts the request as open to its VM until the answer is done (or the client leaves). */
  function tracked(res: ServerResponse, vmId: string): void {
    const release = lifecycle.track(vmId);
    res.once("close", release);
  }

  /** `api.<base>` on the embedded front: to the route API, which answers or relays to the platform. */
  async function forwardToApi(req: IncomingMessage, res: ServerResponse, target: Target): Promise<void> {
    const r = await forwardRequest(req, res, target, {
      agent: ctx.agent,
      headers: ctx.headersFor(req),
      connectTimeoutMs: ctx.connectTimeoutMs,
      // A restore or a sleep through the API blocks for seconds.
      responseTimeoutMs: Math.max(config.wakeTimeoutMs, config.idleDrainTimeoutMs) + 30_000,
    });
    if (r.ok) return void metrics.request(r.status);
    if (r.reason === "client-gone") return void metrics.request(CLIENT_GONE);
    sendFailure(res, { status: 503, error: "route API unavailable", headers: { "retry-after": "1" } });
  }

  /** `retried`: not this request's first try; `resets`: how many of its tries the VM reset. */
  async function forwardRunning(req: IncomingMessage, res: ServerResponse, d: Routed, retried: boolean, deadline = Date.now() + config.wakeTimeoutMs, resets = 0): Promise<void> {
    const port = d.route.targetPort;
    const target: Target = { host: d.vm.guest_ip!, port };
    const started = performance.now();
    if (!retried) tracked(res, d.route.vmId);
    const r = await forwardRequest(req, res, target, {
      agent: ctx.agent,
      headers: ctx.headersFor(req),
      connectTimeoutMs: ctx.connectTimeoutMs,
      responseTimeoutMs: config.wakeTimeoutMs,
      stale: staleCheck(target.host, port),
    });
    if (r.ok) return countForwarded(req, d.vm, d.subdomain, r.status, started);
    if (r.reason === "stale") {
      dropPooled(ctx.agent, target.host, port);
      // Nothing of a GET had to leave the socket to be lost: ask what the VM is, as for a VM not reached.
      if (r.sent || !isIdempotent(req.method)) return sendForwardFailure(res, r, port);
    }
    if (r.reason === "reset" && resets < RESET_TRIES && hasNoBody(req) && isIdempotent(req.method)) {
      // A kept-alive socket the VM had closed, or a connection frozen by a snapshot and reset after
      // the restore (the VM may have slept and woken, even twice): a fresh try, as for a VM not
      // reached. Bounded, so an app that resets every request gets its 502 soon.
      if (r.reused) return forwardRunning(req, res, d, true, deadline, resets + 1);
      return notReached(req, res, d, "unreachable", r, deadline, resets + 1);
    }
    // Nothing reached the VM: no route to it, no answer to the connect in time, or a frozen connection.
    const unreachable = r.reason === "unreachable" || r.reason === "stale" || (r.reason === "timeout" && r.phase === "connect");
    if (r.reason !== "refused" && r.reason !== "reset" && !unreachable) return sendForwardFailure(res, r, port);
    if (r.reason === "reset" && !(r.reused && hasNoBody(req))) return sendForwardFailure(res, r, port);
    if (unreachable && (Date.now() >= deadline || ctx.closed)) return sendForwardFailure(res, r, port);
    return notReached(req, res, d, unreachable ? "unreachable" : "refused", r, deadline, resets);
  }

  /** The cached state said running but the VM did not take the request: the lifecycle asks what it really is. */
  async function notReached(req: IncomingMessage, res: ServerResponse, d: Routed, how: "unreachable" | "refused", r: ForwardResult & { ok: false }, deadline: number, resets: number): Promise<void> {
    const started = performance.now();
    const next = await lifecycle.whenNotReached(d.route, how);
    if (next.kind === "fail") return sendFailure(res, next.failure);
    if (next.kind === "app") return sendForwardFailure(res, r, d.route.targetPort);
    if (next.kind === "retry") return forwardRunning(req, res, { ...d, vm: next.vm }, true, deadline, resets);
    return wakeAndForward(req, res, { ...d, vm: next.vm }, started);
  }

  async function wakeAndForward(req: IncomingMessage, res: ServerResponse, d: Routed, waitStart: number): Promise<void> {
    const declared = declaredLength(req);
    if (declared !== undefined && declared > config.wakeMaxBody) {
      return sendTooLarge(req, res, { status: 413, error: bodyTooLargeMessage(config.wakeMaxBody) });
    }
    // The body's bytes count against the process's ceiling until the answer is done; a declared
    // length is taken whole before anything is read or any wake starts.
    if (res.destroyed) {
      // Left while the route was resolved: nothing to hold, and 'close' will not fire again.
      metrics.request(CLIENT_GONE);
      return;
    }
    const lease = lifecycle.heldBodies.lease();
    res.once("close", lease.release);
    if (declared !== undefined && declared > 0 && !lease.take(declared)) {
      return sendTooLarge(req, res, new HeldBytesFullError(lease.limit).failure);
    }
    const body = hasNoBody(req) ? undefined : readBody(req, config.wakeMaxBody, declared === undefined ? lease : undefined);
    body?.catch(() => {});
    // A fallback's answer is always shown as a 307 (Traefik rewrites its status): no waking page.
    const pageAfter = config.wakePageAfterMs > 0 && wantsWakingPage(req) && !d.fallback ? config.wakePageAfterMs : 0;
    const o = await lifecycle.hold(d.route, d.subdomain, goneWatch(res), body, pageAfter);
    switch (o.kind) {
      case "full":
        return sendFailure(res, lifecycle.tooManyWaiters(d.route.vmId));
      case "gone":
        metrics.request(CLIENT_GONE);
        return;
      case "page": {
        // At least as long as this request waited, and the VM's usual wake time.
        const { elapsedMs, recentMs } = lifecycle.wakeProgress(d.route.vmId);
        return answers.page(res, d.subdomain, { elapsedMs: elapsedMs ?? pageAfter, recentMs });
      }
      case "failure":
        if (o.failure.status === 413) return sendTooLarge(req, res, o.failure);
        // Refused while the client is still uploading (the bodies' ceiling): answered, then the rest discarded.
        if (body !== undefined && !req.readableEnded) return sendTooLarge(req, res, { ...o.failure, headers: { ...o.failure.headers, ...coldHeaders(waitStart) } });
        return sendFailure(res, { ...o.failure, headers: { ...o.failure.headers, ...coldHeaders(waitStart) } });
      case "ready":
        if (d.fallback) return sendRetry(res, req.url ?? "/", waitStart);
        // Kept-alive sockets from before the sleep are dead or frozen: replays open fresh ones.
        dropPooled(ctx.agent, o.vm.guest_ip!, d.route.targetPort);
        tracked(res, d.route.vmId);
        return replay(req, res, d, o.vm, o.body ?? Buffer.alloc(0), o.deadline, waitStart);
    }
  }

  async function replay(req: IncomingMessage, res: ServerResponse, d: Routed, vm: Vm, body: Buffer, deadline: number, waitStart: number): Promise<void> {
    const port = d.route.targetPort;
    const headers = ctx.headersFor(req);
    let resets = 0;
    for (;;) {
      const target: Target = { host: vm.guest_ip!, port };
      const r: ForwardResult = await forwardRequest(req, res, target, {
        agent: ctx.agent,
        headers,
        body,
        extraResponseHeaders: coldList(waitStart),
        connectTimeoutMs: ctx.connectTimeoutMs,
        responseTimeoutMs: config.wakeTimeoutMs,
        stale: staleCheck(target.host, port),
      });
      if (r.ok) return countForwarded(req, vm, d.subdomain, r.status, waitStart);
      if (r.reason === "stale") dropPooled(ctx.agent, target.host, port);
      // Only a connection that never carried a byte is retried (refused, or not reached), so nothing
      // runs twice, except a bodyless GET or HEAD cut or frozen before its answer (a sleep made on the
      // platform as it was replayed), which HTTP lets run again: a few times, after the next wake.
      const lostGet = (r.reason === "reset" || r.reason === "stale") && isIdempotent(req.method) && body.length === 0 && resets < RESET_TRIES;
      if (lostGet) resets++;
      const unreachable = r.reason === "unreachable" || (r.reason === "timeout" && r.phase === "connect") || lostGet;
      const again = r.reason === "refused" || unreachable;
      if (!again || Date.now() + REPLAY_RETRY_MS >= deadline || ctx.closed) {
        return sendForwardFailure(res, r, port, coldHeaders(waitStart));
      }
      if (unreachable) {
        // Not reached after its wake: it may have been put to sleep again meanwhile. Then it waits
        // for the next wake, its body still held.
        const next = await lifecycle.whenNotReached(d.route, "unreachable");
        if (next.kind === "fail") return sendFailure(res, { ...next.failure, headers: { ...next.failure.headers, ...coldHeaders(waitStart) } });
        if (next.kind === "hold") {
          const o = await lifecycle.hold(d.route, d.subdomain, goneWatch(res), Promise.resolve(body), 0);
          if (o.kind !== "ready") return o.kind === "gone" ? void metrics.request(CLIENT_GONE) : sendFailure(res, o.kind === "failure" ? o.failure : lifecycle.tooManyWaiters(d.route.vmId));
          dropPooled(ctx.agent, o.vm.guest_ip!, port);
          vm = o.vm;
          deadline = o.deadline;
        }
        continue;
      }
      await new Promise((r) => setTimeout(r, REPLAY_RETRY_MS));
    }
  }


  function countForwarded(req: IncomingMessage, vm: Vm, subdomain: string, status: number, started: number) {
    metrics.request(status);
    if (ctx.debug) ctx.log.debug("proxied", { vm: vm.id, subdomain, method: req.method, status, ms: Math.round(performance.now() - started) });
  }

  function sendForwardFailure(res: ServerResponse, r: Exclude<ForwardResult | UpgradeResult, { ok: true }>, port: number, headers?: Record<string, string>) {
    if (r.reason === "client-gone") {
      metrics.request(CLIENT_GONE);
      return;
    }
    sendFailure(res, { ...forwardFailure(ctx, r, port), headers });
  }

  return (req, res, resolved) =>
    serve(req, res, resolved).catch((err: unknown) => {
      ctx.log.error("proxy error", { err, url: req.url });
      sendFailure(res, { status: 502, error: "proxy error" });
    });
}
