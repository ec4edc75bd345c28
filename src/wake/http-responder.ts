/**
 * Plain HTTP requests: resolve the route, ask the lifecycle, then forward to the running VM or
 * hold until it is woken and replay (buffered body). Everything about the VM's state lives in
 * the lifecycle; this file only moves bytes and writes answers.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Failure } from "../lifecycle/failure.ts";
import type { Vm } from "../vms/platform.ts";
import { bodyTooLargeMessage, HeldBytesFullError } from "../lifecycle/held-bytes.ts";
import { declaredLength, hasNoBody, readBody } from "./body.ts";
import { forwardRequest, type ForwardResult, type Target, type UpgradeResult } from "./forward.ts";
import { WAKING_PAGE_HEADERS, wakingPage, wantsWakingPage } from "./page.ts";
import {
  CLIENT_GONE,
  coldHeaders,
  coldList,
  failureBody,
  forwardFailure,
  isIdempotent,
  REPLAY_RETRY_MS,
  type ProxyContext,
  type Routed,
} from "./proxy-context.ts";

/** A refused upload is read and discarded until the client is quiet this long... */
const DISCARD_IDLE_MS = 2000;
/** ...or for this long in all. */
const DISCARD_MAX_MS = 30_000;

/** The request handler for plain HTTP; never rejects (errors become answers). */
export function createHttpResponder(ctx: ProxyContext): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const { config, lifecycle, metrics } = ctx;

  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const r = await ctx.resolve(req);
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

  async function forwardRunning(req: IncomingMessage, res: ServerResponse, d: Routed, retried: boolean): Promise<void> {
    const port = d.route.targetPort;
    const target: Target = { host: d.vm.guest_ip, port };
    const started = performance.now();
    if (!retried) tracked(res, d.route.vmId);
    const r = await forwardRequest(req, res, target, {
      agent: ctx.agent,
      headers: ctx.headersFor(req),
      connectTimeoutMs: ctx.connectTimeoutMs,
      responseTimeoutMs: config.wakeTimeoutMs,
    });
    if (r.ok) return countForwarded(req, d.vm, d.subdomain, r.status, started);
    if (r.reason === "reset" && r.reused && !retried && hasNoBody(req) && isIdempotent(req.method)) {
      // A kept-alive socket the VM had closed (it may have just gone to sleep): one fresh try.
      return forwardRunning(req, res, d, true);
    }
    if (r.reason !== "refused" && r.reason !== "reset") return sendForwardFailure(res, r, port);
    if (r.reason === "reset" && !(r.reused && hasNoBody(req))) return sendForwardFailure(res, r, port);
    // The cached state said running but nothing listens: ask the platform what the VM really is.
    let live: Vm | undefined;
    try {
      live = await lifecycle.refresh(d.route.vmId);
    } catch (err) {
      return sendFailure(res, lifecycle.platformDown(err, d.route.vmId));
    }
    if (!live) return sendFailure(res, { status: 502, error: "vm not found" });
    // Running and no sleep under way: the app itself refused. Otherwise the VM is on its way down.
    if (live.state === "running" && !lifecycle.sleepInProgress(d.route.vmId)) return sendForwardFailure(res, r, port);
    const next = await lifecycle.admit(d.route, live);
    if (next.kind === "fail") return sendFailure(res, next.failure);
    if (next.kind === "forward") return sendForwardFailure(res, r, port);
    return wakeAndForward(req, res, { ...d, vm: live }, started);
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
    const o = await lifecycle.hold(d.route, d.subdomain, onGone, body, pageAfter);
    switch (o.kind) {
      case "full":
        return sendFailure(res, lifecycle.tooManyWaiters(d.route.vmId));
      case "gone":
        metrics.request(CLIENT_GONE);
        return;
      case "page":
        return sendPage(res, d, pageAfter);
      case "failure":
        if (o.failure.status === 413) return sendTooLarge(req, res, o.failure);
        // Refused while the client is still uploading (the bodies' ceiling): answered, then the rest discarded.
        if (body !== undefined && !req.readableEnded) return sendTooLarge(req, res, { ...o.failure, headers: { ...o.failure.headers, ...coldHeaders(waitStart) } });
        return sendFailure(res, { ...o.failure, headers: { ...o.failure.headers, ...coldHeaders(waitStart) } });
      case "ready":
        if (d.fallback) return sendRetry(res, req.url ?? "/", waitStart);
        tracked(res, d.route.vmId);
        return replay(req, res, d, o.vm, o.body ?? Buffer.alloc(0), o.deadline, waitStart);
    }
  }

  async function replay(req: IncomingMessage, res: ServerResponse, d: Routed, vm: Vm, body: Buffer, deadline: number, waitStart: number): Promise<void> {
    const port = d.route.targetPort;
    const target: Target = { host: vm.guest_ip, port };
    const headers = ctx.headersFor(req);
    for (let attempt = 0; ; attempt++) {
      const extra = coldList(waitStart);
      const r: ForwardResult = await forwardRequest(req, res, target, {
        agent: ctx.agent,
        headers,
        body,
        extraResponseHeaders: extra,
        connectTimeoutMs: ctx.connectTimeoutMs,
        responseTimeoutMs: config.wakeTimeoutMs,
      });
      if (r.ok) return countForwarded(req, vm, d.subdomain, r.status, waitStart);
      // Only a refused connection is retried: no byte reached the VM, so nothing can run twice.
      const again = r.reason === "refused" || (r.reason === "reset" && r.reused && attempt === 0 && isIdempotent(req.method) && body.length === 0);
      if (!again || Date.now() + REPLAY_RETRY_MS >= deadline || ctx.closed) {
        return sendForwardFailure(res, r, port, coldHeaders(waitStart));
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

  function sendFailure(res: ServerResponse, f: Failure): void {
    metrics.request(f.status);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const text = failureBody(f);
    res.writeHead(f.status, { ...f.headers, "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  }

  /**
   * A refusal (413, or 503 when the process holds too many bodies) while the client may still be
   * uploading: the answer goes out at once, the rest of the body is read and discarded, and only
   * then is the connection closed, so the client's kernel does not reset it and lose the answer.
   * The discard ends when the client goes quiet for DISCARD_IDLE_MS (a slow uploader that keeps
   * sending is not cut) or after DISCARD_MAX_MS in all (one that drips forever is).
   */
  function sendTooLarge(req: IncomingMessage, res: ServerResponse, f: Failure): void {
    metrics.request(f.status);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const text = failureBody(f);
    res.writeHead(f.status, { ...f.headers, "content-type": "application/json", "content-length": Buffer.byteLength(text), connection: "close" });
    res.write(text);
    const end = () => {
      clearTimeout(idle);
      clearTimeout(cap);
      req.off("data", onData);
      res.end();
    };
    const idle = setTimeout(end, DISCARD_IDLE_MS).unref();
    const cap = setTimeout(end, DISCARD_MAX_MS).unref();
    const onData = () => idle.refresh();
    if (req.readableEnded) return end();
    req.on("data", onData);
    req.once("end", end);
    req.once("close", end);
    req.resume();
  }

  /**
   * The answer to Traefik's sleep fallback once the VM is awake: back to the same URL. Traefik
   * sends it as a 307 (FALLBACK_REWRITE), so the client repeats the GET, which now reaches the VM
   * on its direct router and gets the app's own answer. The sidecar does not run the GET itself:
   * the app sees it once.
   */
  function sendRetry(res: ServerResponse, path: string, waitStart?: number): void {
    metrics.request(307);
    const text = JSON.stringify({ status: "awake", retry: path });
    res.writeHead(307, {
      ...(waitStart === undefined ? {} : coldHeaders(waitStart)),
      location: path,
      "cache-control": "no-store",
      "content-type": "application/json",
      "content-length": Buffer.byteLength(text),
    });
    res.end(text);
  }

  /** The waking page, with how long this VM's wake has run (at least as long as this request waited) and its usual wake time. */
  function sendPage(res: ServerResponse, d: Routed, waitedMs: number): void {
    metrics.request(503);
    const { elapsedMs, recentMs } = lifecycle.wakeProgress(d.route.vmId);
    const html = wakingPage(d.subdomain, { elapsedMs: elapsedMs ?? waitedMs, recentMs });
    res.writeHead(503, { ...WAKING_PAGE_HEADERS, "content-length": Buffer.byteLength(html) });
    res.end(html);
  }

  return (req, res) =>
    serve(req, res).catch((err: unknown) => {
      ctx.log.error("proxy error", { err, url: req.url });
      sendFailure(res, { status: 502, error: "proxy error" });
    });
}

/** A failure answer on a raw socket (upgrade requests have no ServerResponse). */
export function rawFailureText(f: Failure, statusText: string, extra?: string[]): string {
  const text = failureBody(f);
  const lines = [`HTTP/1.1 ${f.status} ${statusText}`, "Content-Type: application/json", `Content-Length: ${Buffer.byteLength(text)}`, "Connection: close"];
  for (const [k, v] of Object.entries(f.headers ?? {})) lines.push(`${k}: ${v}`);
  if (extra) for (let i = 0; i < extra.length; i += 2) lines.push(`${extra[i]}: ${extra[i + 1]}`);
  return lines.join("\r\n") + "\r\n\r\n" + text;
}
