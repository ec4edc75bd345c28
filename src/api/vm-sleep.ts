/**
 * `POST /vms/{vm_id}/sleep` (run the zero-loss sleep now) and `GET /vms/{vm_id}/activity` (why a
 * VM is or is not asleep), with the same auth and per-user scoping as the routes.
 */
import type { Hono } from "hono";
import * as v from "valibot";
import { getIdleFacts } from "../db/activity.repo.ts";
import { getSleep } from "../db/sleeps.repo.ts";
import { queryRows } from "../db/client.ts";
import { sql } from "drizzle-orm";
import { AppError } from "../errors.ts";
import { STALE_MS } from "../lifecycle/runtime.ts";
import type { ApiDeps, ApiEnv, SleepDeps } from "./deps.ts";
import { readJsonBody } from "./body.ts";
import { isoSeconds } from "./routes.schemas.ts";
import { vmForPrincipal } from "./vm-access.ts";

export const SleepBody = v.pipe(
  v.object({ action: v.pipe(v.optional(v.picklist(["snapshot", "stop"])), v.description("How to put it to sleep. Default HATCH_IDLE_ACTION.")) }),
  v.metadata({ example: { action: "snapshot" } }),
);

export const ActivitySchema = v.object({
  vm_id: v.string(),
  state: v.pipe(v.string(), v.description("The VM's state on the platform.")),
  last_activity_at: v.pipe(v.nullable(v.string()), v.description("Last request or open connection seen on any path (null: never reached).")),
  idle_since: v.pipe(v.nullable(v.string()), v.description("What the idle time counts from: the last activity, or the creation of the VM's first route if later (null: no routes).")),
  open_connections: v.pipe(v.number(), v.description("Requests and connections open to the VM through the sidecars and the embedded proxy now.")),
  idle_timeout_s: v.pipe(v.number(), v.description("HATCH_IDLE_TIMEOUT in seconds (0: idle sleep is off).")),
  sleeps_at: v.pipe(
    v.nullable(v.string()),
    v.description("When the idle sweeper will put it to sleep at the earliest (null: not running, no routes, connections open, a sleep under way, or idle sleep off)."),
  ),
  sleep: v.pipe(
    v.nullable(v.object({ phase: v.string(), reason: v.string(), started_at: v.string() })),
    v.description("A sleep under way: draining (routers out, work finishing) or sleeping (snapshot/stop running)."),
  ),
  sleep_blocked: v.pipe(
    v.nullable(v.string()),
    v.description("Why the VM platform refuses to put the VM to sleep (e.g. `snapshot limit reached (10/10)`): the idle sweeper leaves it awake until its state changes; null when it does not."),
  ),
  platform_access: v.pipe(
    v.object({ status: v.picklist(["ok", "no_credential", "credential_rejected", "unowned", "no_credentials_key"]), detail: v.nullable(v.string()) }),
    v.description(
      "Whether hatch-proxy can follow, wake and sleep the VM by itself (a key-scoped platform acts on a VM only for its owner): `ok`, or why not, and what the owner can do (`detail`).",
    ),
  ),
});

const iso = (d: Date) => d.toISOString();

/** Registers the two endpoints (only where this process can run the sleep protocol). */
export function registerSleepEndpoints(app: Hono<ApiEnv>, deps: ApiDeps, sleep: SleepDeps): void {
  const { database, config } = deps;

  app.post("/vms/:vm_id/sleep", async (c) => {
    const principal = c.get("principal");
    const vmId = c.req.param("vm_id");
    const hasBody = c.req.header("content-length") !== undefined ? c.req.header("content-length") !== "0" : c.req.header("transfer-encoding") !== undefined;
    const body = hasBody ? await readJsonBody(c) : {};
    if (typeof body !== "object" || body === null || Array.isArray(body)) throw new AppError(400, "request body must be a JSON object");
    const unknown = Object.keys(body).filter((k) => k !== "action");
    if (unknown.length) throw new AppError(400, `unknown field${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => JSON.stringify(k)).join(", ")}`);
    const parsed = v.safeParse(SleepBody, body);
    if (!parsed.success) throw new AppError(400, 'action must be "snapshot" or "stop"');
    const action = parsed.output.action ?? config.idleAction;
    if (action === "stop" && sleep.canStart === false) {
      throw new AppError(409, "the VM platform cannot start a stopped VM (Hatch has no start call): a stop would put it to sleep for good; use \"snapshot\"", { code: "cannot_start" });
    }
    const vm = await vmForPrincipal(deps, vmId, principal);
    if (vm.state !== "running") throw new AppError(409, `vm is not running (current state: ${vm.state})`, { code: "not_running" });
    const r = await sleep.sleeper.sleep(vmId, "api", { action: parsed.output.action });
    switch (r.outcome) {
      case "done":
        return c.json(r.vm);
      case "not_running":
        throw new AppError(409, `vm is not running (current state: ${r.vm?.state ?? "gone"})`, { code: "not_running" });
      case "busy":
        throw new AppError(409, `a sleep of this vm is already under way (${r.sleep.reason}, ${r.sleep.phase} since ${isoSeconds(r.sleep.startedAt)})`, { code: "sleep_in_progress" });
      case "cancelled":
        throw new AppError(409, `sleep cancelled: ${r.why}`, { code: "sleep_cancelled" });
      case "refused":
        throw new AppError(503, `cannot put the vm to sleep safely: ${r.why}`, { code: "sleep_unconfirmable", headers: { "Retry-After": "5" } });
      case "failed":
        if (r.blocked) throw new AppError(409, `the VM platform refused to put the vm to sleep: ${r.why}`, { code: "sleep_blocked" });
        if (r.unavailable) throw new AppError(503, "VM platform unavailable: try again shortly", { code: "platform_unavailable", headers: { "Retry-After": "1" } });
        throw new AppError(502, `the VM platform did not put the vm to sleep: ${r.why}`, { code: "sleep_failed" });
    }
  });

  app.get("/vms/:vm_id/activity", async (c) => {
    const principal = c.get("principal");
    const vmId = c.req.param("vm_id");
    const vm = await vmForPrincipal(deps, vmId, principal);
    // What this process has open goes in first, so its own view is current.
    await sleep.activity.flush();
    const [facts, row, last] = await Promise.all([
      getIdleFacts(database, vmId, STALE_MS),
      getSleep(database, vmId),
      queryRows<{ at: Date | string }>(database, sql`select last_activity_at as at from vm_activity where vm_id = ${vmId}`),
    ]);
    const active = row && !row.cancelledAt ? row : undefined;
    const open = facts?.openConnections ?? 0;
    let sleepsAt: string | null = null;
    if (config.idleTimeoutMs > 0 && facts && vm.state === "running" && open === 0 && !active && !sleep.sleeper.blocks.reason(vmId, vm)) {
      sleepsAt = iso(new Date(Math.max(Date.now(), +facts.idleSince + config.idleTimeoutMs)));
    }
    const lastAt = last[0] ? new Date(last[0].at) : undefined;
    const access = (await deps.tenancy?.access(vmId)) ?? { ok: true };
    return c.json({
      vm_id: vmId,
      state: vm.state,
      last_activity_at: lastAt ? iso(lastAt) : null,
      idle_since: facts ? iso(facts.idleSince) : null,
      open_connections: open,
      idle_timeout_s: config.idleTimeoutMs / 1000,
      sleeps_at: sleepsAt,
      sleep: active ? { phase: active.phase, reason: active.reason, started_at: iso(active.startedAt) } : null,
      sleep_blocked: sleep.sleeper.blocks.reason(vmId, vm) ?? null,
      platform_access: access.ok ? { status: "ok", detail: null } : { status: access.problem.reason, detail: access.problem.message },
    } satisfies v.InferOutput<typeof ActivitySchema>);
  });
}
