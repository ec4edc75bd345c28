/** What the HTTP and upgrade responders are given: settings, the lifecycle, the pool, and answer helpers. */
import type { Agent, IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { formatDuration, type Config } from "../config.ts";
import type { RouteRow } from "../db/schema.ts";
import type { Failure } from "../lifecycle/failure.ts";
import type { VmLifecycle } from "../lifecycle/vm-lifecycle.ts";
import type { Logger } from "../log.ts";
import type { Vm } from "../vms/platform.ts";
import type { ForwardResult, UpgradeResult } from "./forward.ts";
import type { WakeMetrics } from "../lifecycle/metrics.ts";

/** A request whose Host named a route, with the VM as last known (refreshed for a fallback). */
export interface Routed {
  route: RouteRow;
  /** Always one with a `guest_ip`: the resolver and the wake flight refuse VMs without a network. */
  vm: Vm;
  subdomain: string;
  /** Traefik's errors middleware re-asked for a GET its direct router failed (the VM may be asleep). */
  fallback: boolean;
}

/** `api`: Host `api.<base>` on the embedded front, which serves Hatch's API there as Traefik does. */
export type Resolved = { kind: "fail"; failure: Failure } | { kind: "api"; target: { host: string; port: number } } | ({ kind: "routed" } & Routed);

export interface ResponderDeps {
  config: Config;
  log: Logger;
  lifecycle: VmLifecycle;
  metrics: WakeMetrics;
  /** Pool for plain requests to VMs. */
  agent: Agent;
  connectTimeoutMs: number;
  /** The raw header list to send to the VM. */
  headersFor(req: IncomingMessage, upgrade?: boolean): string[];
  /** Upgraded connections, cut when the proxy closes. */
  tunnels: Set<Duplex>;
  readonly closed: boolean;
  debug: boolean;
}

/** Spacing of forward retries after readiness when the port still refuses (the app may be rebinding). */
export const REPLAY_RETRY_MS = 25;
/** Requests counted as 499 in metrics: the client left before an answer (nginx's convention). */
export const CLIENT_GONE = 499;

export function isIdempotent(method: string | undefined): boolean {
  return method === "GET" || method === "HEAD" || method === "OPTIONS";
}

/** The public answer for a forward that failed before anything was relayed. */
export function forwardFailure(ctx: ResponderDeps, r: Exclude<ForwardResult | UpgradeResult, { ok: true }>, port: number): Failure {
  switch (r.reason) {
    case "refused":
      return { status: 502, error: `vm port ${port} refused the connection` };
    case "unreachable":
      return { status: 502, error: `vm port ${port} could not be reached (${r.code})` };
    case "stale":
      return { status: 502, error: `vm port ${port} went silent on a kept-alive connection (the vm was paused); the request may not have run` };
    case "reset":
      return { status: 502, error: `vm port ${port} closed the connection before answering` };
    case "timeout":
      return r.phase === "connect"
        ? { status: 504, error: `vm port ${port} did not accept the connection within ${formatDuration(ctx.connectTimeoutMs)}` }
        : { status: 504, error: `vm did not answer within ${formatDuration(ctx.config.wakeTimeoutMs)} (HATCH_PROXY_WAKE_TIMEOUT)` };
    case "error":
      ctx.log.warn("forward failed", { port, err: r.error });
      return { status: 502, error: `vm port ${port} could not be reached` };
    case "client-gone":
      return { status: CLIENT_GONE, error: "client closed the connection" };
  }
}

/** Server-Timing and the cold-start marker, as a header object and as a raw list. */
export function coldHeaders(waitStart: number): Record<string, string> {
  return { "server-timing": `wake;dur=${Math.round(performance.now() - waitStart)}`, "x-hatch-cold-start": "1" };
}
export function coldList(waitStart: number): string[] {
  return ["Server-Timing", `wake;dur=${Math.round(performance.now() - waitStart)}`, "X-Hatch-Cold-Start", "1"];
}

/**
 * Ends the idle kept-alive sockets `agent` holds to host:port. On Hatch's network a VM that was
 * paused for a snapshot leaves its connections frozen (no FIN, no reset): after it sleeps or wakes,
 * a request sent on one would wait for an answer that never comes, or meet a reset.
 */
export function dropPooled(agent: Agent, host: string, port: number): void {
  const name = agent.getName({ host, port });
  for (const socket of agent.freeSockets[name] ?? []) socket.destroy();
}

/** The JSON body of a failure. */
export function failureBody(f: Failure): string {
  return JSON.stringify(f.detail ? { error: f.error, detail: f.detail } : { error: f.error });
}
