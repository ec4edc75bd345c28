/**
 * Upgrades (WebSockets), once resolved: ask the lifecycle, wake if needed, then splice the two sockets.
 * A tunnel counts as an open connection to its VM for as long as it lives, so a quiet WebSocket
 * keeps its VM awake.
 */
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { SHUTTING_DOWN } from "../lifecycle/failure.ts";
import type { Admission } from "../lifecycle/vm-lifecycle.ts";
import type { Vm } from "../vms/platform.ts";
import { WakeAnswers } from "./answers.ts";
import { forwardUpgrade } from "./forward.ts";
import { CLIENT_GONE, coldList, forwardFailure, REPLAY_RETRY_MS, type ResponderDeps, type Resolved } from "./proxy-context.ts";

/** The handler for a resolved upgrade request; never rejects (errors become raw answers on the socket). */
export function createUpgradeResponder(ctx: ResponderDeps): (req: IncomingMessage, socket: Duplex, head: Buffer, resolved: Resolved) => Promise<void> {
  const { config, lifecycle, metrics } = ctx;
  const answers = new WakeAnswers(metrics);
  const rawFailure = answers.raw.bind(answers);

  async function serve(req: IncomingMessage, socket: Duplex, head: Buffer, r: Resolved): Promise<void> {
    if (r.kind === "fail") return rawFailure(socket, r.failure);
    if (r.kind === "api") return rawFailure(socket, { status: 404, error: "not found" });
    const { route } = r;
    let vm: Vm = r.vm;
    let extra: string[] | undefined;
    let deadline = Date.now() + config.wakeTimeoutMs;
    let waitStart = performance.now();
    let decision: Admission = await lifecycle.admit(route, vm);
    for (let attempt = 0; ; attempt++) {
      if (decision.kind === "fail") return rawFailure(socket, decision.failure, extra);
      if (decision.kind === "hold") {
        const onGone = (cb: () => void) => {
          if (socket.destroyed) {
            queueMicrotask(cb);
            return () => {};
          }
          socket.once("close", cb);
          return () => socket.off("close", cb);
        };
        const o = await lifecycle.hold(route, r.subdomain, onGone, undefined, 0);
        if (o.kind === "full") return rawFailure(socket, lifecycle.tooManyWaiters(route.vmId));
        if (o.kind === "gone") {
          metrics.request(CLIENT_GONE);
          return;
        }
        if (o.kind !== "ready") return rawFailure(socket, o.kind === "failure" ? o.failure : SHUTTING_DOWN, coldList(waitStart));
        vm = o.vm;
        deadline = o.deadline;
        extra = coldList(waitStart);
        decision = { kind: "forward", vm };
      } else vm = decision.vm;
      const port = route.targetPort;
      // Counted open from the handshake on: a drain must not snapshot a VM mid-handshake either.
      const release = lifecycle.track(route.vmId);
      const u = await forwardUpgrade(req, socket, head, { host: vm.guest_ip!, port }, {
        headers: ctx.headersFor(req, true),
        extraResponseHeaders: extra,
        connectTimeoutMs: ctx.connectTimeoutMs,
        responseTimeoutMs: config.wakeTimeoutMs,
      });
      if (u.ok) {
        metrics.request(u.status);
        if (u.status === 101) {
          ctx.tunnels.add(socket);
          socket.once("close", () => {
            ctx.tunnels.delete(socket);
            release();
          });
        } else release();
        return;
      }
      release();
      if (u.reason === "client-gone") {
        metrics.request(CLIENT_GONE);
        return;
      }
      const unreachable = u.reason === "unreachable" || (u.reason === "timeout" && u.phase === "connect");
      if (u.reason !== "refused" && !unreachable) return rawFailure(socket, forwardFailure(ctx, u, port), extra);
      if (extra || unreachable) {
        // Not reached right after readiness, or a guest that does not answer yet: retry within the deadline.
        if (Date.now() + REPLAY_RETRY_MS >= deadline || ctx.closed) return rawFailure(socket, forwardFailure(ctx, u, port), extra);
        if (extra) {
          await new Promise((res) => setTimeout(res, REPLAY_RETRY_MS));
          continue;
        }
      }
      if (attempt > 0 && !unreachable) return rawFailure(socket, forwardFailure(ctx, u, port));
      // The cached state said running but the VM did not take it: the lifecycle asks what it really is.
      const next = await lifecycle.whenNotReached(route, unreachable ? "unreachable" : "refused");
      if (next.kind === "app") return rawFailure(socket, forwardFailure(ctx, u, port));
      decision = next.kind === "fail" ? next : next.kind === "retry" ? { kind: "forward", vm: next.vm } : { kind: "hold" };
      waitStart = performance.now();
    }
  }

  return (req, socket, head, resolved) =>
    serve(req, socket, head, resolved).catch((err: unknown) => {
      ctx.log.error("proxy upgrade error", { err, url: req.url });
      rawFailure(socket, { status: 502, error: "proxy error" });
    });
}
