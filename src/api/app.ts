import { Hono, type Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { Counter, Histogram, Registry } from "prom-client";
import { DatabaseNotMigratedError, databaseUnavailable } from "../db/errors.ts";
import { MigrationGate } from "../db/migrations.ts";
import { AppError } from "../errors.ts";
import { randomAlnum } from "../ids.ts";
import type { Principal } from "./auth.ts";
import { CLIENT_CLOSED } from "./body.ts";
import type { ApiDeps, ApiEnv } from "./deps.ts";
import { registerHealthEndpoints } from "./health.ts";
import { IMPORT_PATH, registerImportEndpoint } from "./import-endpoint.ts";
import { buildOpenApiDocument } from "./openapi.ts";
import { registerRouteEndpoints } from "./routes.ts";
import { registerSleepEndpoints } from "./vm-sleep.ts";

export type { ApiDeps, ApiEnv } from "./deps.ts";

/** Every path the API serves and its methods: unknown methods on these paths get 405 with Allow. */
const ALLOWED: [RegExp, string[]][] = [
  [/^\/vms\/[^/]+\/routes\/?$/, ["GET", "POST"]],
  [/^\/routes\/[^/]+\/?$/, ["GET", "DELETE"]],
  [/^\/vms\/[^/]+\/sleep\/?$/, ["POST"]],
  [/^\/vms\/[^/]+\/activity\/?$/, ["GET"]],
  [/^\/(healthz|readyz|metrics|openapi\.json)$/, ["GET"]],
  [/^\/traefik\/config(\.yaml)?$/, ["GET"]],
  [/^\/admin\/import-hatch$/, ["POST"]],
];

/** Builds the route API from its dependencies (no globals: tests build it with their own). */
export function createApp(deps: ApiDeps): Hono<ApiEnv> {
  const app = new Hono<ApiEnv>();
  const registry = new Registry();
  const requests = new Counter({
    name: "hatch_api_requests_total",
    help: "Route API requests by route and status code",
    labelNames: ["method", "route", "code"],
    registers: [registry],
  });
  const duration = new Histogram({
    name: "hatch_api_request_duration_seconds",
    help: "Route API request duration",
    labelNames: ["method", "route"],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });

  app.use(async (c, next) => {
    const start = performance.now();
    const given = c.req.header("x-request-id");
    const requestId = given && /^[A-Za-z0-9._-]{1,128}$/.test(given) ? given : randomAlnum(16);
    const log = deps.log.child({ request_id: requestId });
    c.set("requestId", requestId);
    c.set("log", log);
    // Set before the handler builds its response: changing a built response's headers afterwards
    // makes the Node adapter copy the whole response (its slow path).
    c.header("X-Request-Id", requestId);
    await next();
    const ms = performance.now() - start;
    const route = c.req.routePath && c.req.routePath !== "/*" ? c.req.routePath : "unmatched";
    requests.inc({ method: c.req.method, route, code: String(c.res.status) });
    duration.observe({ method: c.req.method, route }, ms / 1000);
    // The path only: query strings may carry tokens.
    log.info("request", { method: c.req.method, path: c.req.path, status: c.res.status, duration_ms: Math.round(ms * 100) / 100 });
  });

  app.onError((err, c) => errorResponse(err, c));
  app.notFound((c) => {
    const allow = ALLOWED.find(([re]) => re.test(c.req.path))?.[1];
    if (allow && !allow.includes(c.req.method) && !(c.req.method === "HEAD" && allow.includes("GET"))) {
      return c.json({ error: "method not allowed", request_id: c.get("requestId") }, 405, { Allow: allow.join(", ") });
    }
    return c.json({ error: "not found", request_id: c.get("requestId") }, 404);
  });

  // A database that lacks migrations (being restored, or older than this code) answers with empty
  // or missing tables: a 503 then, never an empty list or a write into it.
  const migrated = new MigrationGate(deps.database);
  /** The caller, from the request's key; in per-user mode their key is kept (or replaced) if they own a route. */
  const authenticate = async (c: Context<ApiEnv>): Promise<Principal> => {
    const principal = await deps.auth.authenticate({ authorization: c.req.header("authorization"), apiKey: c.req.header("x-api-key") });
    c.set("principal", principal);
    if (principal.scoped) await deps.tenancy?.offer(principal.userId, principal.key);
    return principal;
  };
  // Auth only on the methods each path serves, so a wrong method is a 405, not a 401.
  const requireAuth = async (c: Context<ApiEnv>, next: () => Promise<void>) => {
    await authenticate(c);
    await migrated.ensure();
    await next();
  };
  app.on(["GET", "POST"], "/vms/:vm_id/routes", requireAuth);
  app.on(["GET", "DELETE"], "/routes/:route_id", requireAuth);

  registerRouteEndpoints(app, deps);
  app.post(IMPORT_PATH, requireAuth);
  registerImportEndpoint(app, deps);
  if (deps.sleep) {
    app.post("/vms/:vm_id/sleep", requireAuth);
    app.get("/vms/:vm_id/activity", requireAuth);
    registerSleepEndpoints(app, deps, deps.sleep);
  }
  const extra = deps.registries ?? [];
  registerHealthEndpoints(app, deps, () => [registry, ...(typeof extra === "function" ? extra() : extra)]);
  if (deps.vmApi) {
    const relay = deps.vmApi;
    // The caller's key is checked here too (one URL, one key), then passed on untouched; the
    // platform's own answer, errors included, goes back as it is.
    const relayed = async (c: Context<ApiEnv>) => {
      const allow = ALLOWED.find(([re]) => re.test(c.req.path))?.[1];
      if (allow) return c.json({ error: "method not allowed", request_id: c.get("requestId") }, 405, { Allow: allow.join(", ") });
      await authenticate(c);
      return relay(c);
    };
    for (const path of ["/vms", "/vms/*", "/images", "/images/*", "/templates", "/templates/*"]) app.all(path, relayed);
  }
  const openapi = buildOpenApiDocument(deps.config);
  app.get("/openapi.json", (c) => c.json(openapi));
  for (const [prefix, sub] of Object.entries(deps.mounts ?? {})) app.route(prefix, sub);
  return app;
}

/** The one JSON error shape. Internal details go to the log only. */
export function errorResponse(err: unknown, c: Context<ApiEnv>) {
  const requestId = c.get("requestId");
  const log = c.get("log");
  if (err instanceof AppError) {
    if (err.status === CLIENT_CLOSED) {
      // The client left mid-request: nobody reads this answer, and it is no fault of ours.
      log?.info("client closed the connection", { reason: err.message });
    } else if (err.status >= 500) log?.warn("request failed", { status: err.status, error: err.message, cause: err.extra.cause });
    const body: Record<string, unknown> = { error: err.message, request_id: requestId };
    if (err.extra.code) body.code = err.extra.code;
    return c.json(body, err.status as 400, err.extra.headers);
  }
  if (err instanceof HTTPException) {
    return c.json({ error: err.message || "bad request", request_id: requestId }, err.status);
  }
  const down = databaseUnavailable(err);
  if (down) {
    log?.error("database unavailable", { cause: down.cause, code: down.code, error: err });
    const body =
      err instanceof DatabaseNotMigratedError
        ? { error: `database not ready (${err.message}): try again shortly`, code: "database_not_migrated" }
        : { error: "database unavailable: try again shortly", code: "database_unavailable" };
    return c.json({ ...body, request_id: requestId }, 503, { "Retry-After": "1" });
  }
  log?.error("unhandled error", { error: err, stack: (err as Error)?.stack });
  return c.json({ error: "internal error", request_id: requestId }, 500);
}
