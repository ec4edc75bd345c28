/** The simulator's Hatch-compatible REST API (plus a test hook to inject restore failures). */
import { Hono, type Context } from "hono";
import type { SimulatorCore } from "./core.ts";
import { SimulatorError, type CreateVmInput } from "./types.ts";

/** Sent on every answer of the simulator's API: `start` when it serves a start call, else `hatch`. */
export const SIMULATOR_HEADER = "x-hatch-simulator";

const CREATE_FIELDS = new Set(["guest_ports", "restore_ms", "enable_network"]);

/** Builds the Hono app; every answer is JSON, errors as `{"error": "..."}`. */
export function createSimulatorApi(core: SimulatorCore): Hono {
  const app = new Hono();
  // Tells a client it talks to the simulator, and what it can do that Hatch cannot (start a stopped VM).
  app.use(async (c, next) => {
    await next();
    c.header(SIMULATOR_HEADER, core.canStart ? "start" : "hatch");
  });
  /** Who the request acts for, from its API key (Bearer or X-API-Key); undefined = unscoped. */
  function callerOf(c: Context): string | undefined {
    const auth = c.req.header("authorization");
    if (auth !== undefined) {
      const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
      if (!m) throw new SimulatorError(401, "invalid authorization header");
      return core.callerOf(m[1]!);
    }
    return core.callerOf(c.req.header("x-api-key") || undefined);
  }

  const allowed = new Map<string, string[]>();
  const route = (method: "GET" | "POST" | "DELETE", path: string, handler: (c: Context) => Response | Promise<Response>) => {
    app.on(method, path, handler);
    allowed.set(path, [...(allowed.get(path) ?? []), method]);
  };

  route("POST", "/vms", async (c) => {
    const body = await jsonObject(c, true);
    const unknown = Object.keys(body).filter((k) => !CREATE_FIELDS.has(k));
    if (unknown.length) throw new SimulatorError(400, `unknown field${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => `"${k}"`).join(", ")}`);
    const vm = await core.createVm(body as CreateVmInput, callerOf(c));
    return c.json(vm, 201);
  });
  route("GET", "/vms", (c) => c.json(core.listVms(callerOf(c))));
  route("GET", "/vms/:id", (c) => {
    const vm = core.getVm(c.req.param("id")!, callerOf(c));
    if (!vm) throw new SimulatorError(404, "not found");
    return c.json(vm);
  });
  route("DELETE", "/vms/:id", async (c) => {
    await core.deleteVm(c.req.param("id")!, callerOf(c));
    return c.json({ status: "deleted" });
  });
  route("POST", "/vms/:id/stop", async (c) => c.json(await core.stop(c.req.param("id")!, callerOf(c))));
  route("POST", "/vms/:id/start", async (c) => c.json(await core.start(c.req.param("id")!, callerOf(c))));
  route("POST", "/vms/:id/restore", async (c) => c.json(await core.restore(c.req.param("id")!, callerOf(c))));
  // The request's signal: a client that leaves mid-snapshot cancels it, as on Hatch.
  route("POST", "/vms/:id/snapshot", async (c) => c.json((await core.takeSnapshot(c.req.param("id")!, callerOf(c), c.req.raw.signal)).snapshot, 201));
  route("GET", "/vms/:id/snapshots", (c) => c.json(core.listSnapshots(c.req.param("id")!, callerOf(c))));
  route("GET", "/vms/:id/metrics", (c) => c.json(core.metrics(c.req.param("id")!, callerOf(c))));
  route("POST", "/vms/:id/exec", (c) => {
    // 404 for a VM the caller cannot see comes first, as for every other VM call.
    if (!core.getVm(c.req.param("id")!, callerOf(c))) throw new SimulatorError(404, "not found");
    throw new SimulatorError(501, "exec is not supported by the simulator");
  });
  // Test hooks (not Hatch's API): what the guest servers received, per `rid` query value.
  route("GET", "/vms/:id/requests", (c) => {
    const id = c.req.param("id")!;
    return c.json({ vm_id: id, counts: core.requestCounts(id, callerOf(c)) });
  });
  route("DELETE", "/vms/:id/requests", (c) => {
    const id = c.req.param("id")!;
    core.resetRequestCounts(id, callerOf(c));
    return c.json({ vm_id: id, counts: {} });
  });
  route("POST", "/vms/:id/fail-restores", async (c) => {
    const body = await jsonObject(c, false);
    const count = body.count;
    if (typeof count !== "number" || !Number.isInteger(count) || count < 0 || Object.keys(body).length !== 1) {
      throw new SimulatorError(400, 'body must be {"count": <non-negative integer>}');
    }
    const id = c.req.param("id")!;
    core.failNextRestores(id, count, callerOf(c));
    return c.json({ vm_id: id, fail_next_restores: count });
  });

  for (const [path, methods] of allowed) {
    app.all(path, (c) => c.json({ error: "method not allowed" }, 405, { Allow: methods.join(", ") }));
  }
  app.notFound((c) => c.json({ error: "not found" }, 404));
  app.onError((err, c) => {
    if (err instanceof SimulatorError) return c.json({ error: err.message }, err.status as 400);
    return c.json({ error: "internal error" }, 500);
  });
  return app;
}

async function jsonObject(c: Context, emptyOk: boolean): Promise<Record<string, unknown>> {
  const text = await c.req.text();
  if (!text.trim() && emptyOk) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new SimulatorError(400, "request body must be valid JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new SimulatorError(400, "request body must be a JSON object");
  return parsed as Record<string, unknown>;
}
