import { toJsonSchema } from "@valibot/to-json-schema";
import * as v from "valibot";
import type { GenericSchema } from "valibot";
import type { Config } from "../config.ts";
import { CreateRouteBody, DeletedSchema, ErrorSchema, RESERVED_SUBDOMAINS, RouteSchema, TEXT } from "./routes.schemas.ts";
import { ActivitySchema, SleepBody } from "./vm-sleep.ts";
import { VERSION } from "../version.ts";
import { ImportBody } from "./import-endpoint.ts";

/**
 * The VM object the sleep endpoint answers with: the VM platform's own (Hatch's fields; the
 * simulator adds guest_ports, wake_count and a few more), documented here only.
 */
const VmSchema = v.looseObject({
  id: v.string(),
  state: v.pipe(v.string(), v.description("running, snapshotted, stopped, … (the VM platform's states).")),
  guest_ip: v.string(),
  image_id: v.optional(v.string()),
  vcpu_count: v.optional(v.number()),
  mem_mib: v.optional(v.number()),
  created_at: v.optional(v.string()),
  updated_at: v.optional(v.string()),
});

const schema = (s: GenericSchema) => {
  const { $schema: _drop, ...rest } = toJsonSchema(s, { errorMode: "ignore" }) as Record<string, unknown>;
  return rest;
};

const err = (description: string, example: string) => ({
  description,
  content: { "application/json": { schema: { $ref: "#/components/schemas/Error" }, example: { error: example } } },
});
/** An error answer with several possible texts, one named example each. */
const errs = (description: string, examples: Record<string, string>) => ({
  description,
  content: {
    "application/json": {
      schema: { $ref: "#/components/schemas/Error" },
      examples: Object.fromEntries(Object.entries(examples).map(([name, text]) => [name, { value: { error: text } }])),
    },
  },
});
const unauthorized = err("Missing or invalid API key (`missing api key`, `invalid authorization header`, `invalid api key`).", "invalid api key");
const notFound = err("Unknown VM or route (or another user's).", "not found");
const unavailable = err("The VM platform or the database is unreachable; retry.", "VM platform unavailable: try again shortly");
const vmIdParam = { name: "vm_id", in: "path", required: true, schema: { type: "string" }, description: "The VM id (opaque, as the VM platform gives it)." };
const routeIdParam = { name: "route_id", in: "path", required: true, schema: { type: "string" }, description: "The route id (rt_…)." };
const routeJson = (description: string, s: unknown) => ({ description, content: { "application/json": { schema: s } } });

/** The OpenAPI 3.1 document, generated from the same valibot schemas the handlers validate with. */
export function buildOpenApiDocument(config: Config) {
  return {
    openapi: "3.1.0",
    info: {
      title: "hatch-proxy route API",
      version: VERSION,
      description: `Hatch-compatible routes: \`<subdomain>.${config.baseDomain}\` → a port of a VM, woken on request when it sleeps. Every other call of Hatch's API (\`/vms\`, \`/vms/{id}\`, its snapshot, restore, stop, snapshots, metrics, exec, connect) is relayed to the VM platform with the caller's credentials (bodies up to 10 MiB), and documented by Hatch; exec and connect are listed here too.`,
    },
    security: [{ bearer: [] }, { apiKey: [] }],
    components: {
      securitySchemes: {
        bearer: { type: "http", scheme: "bearer" },
        apiKey: { type: "apiKey", in: "header", name: "X-API-Key" },
      },
      schemas: {
        Route: schema(RouteSchema),
        CreateRoute: schema(CreateRouteBody),
        Error: schema(ErrorSchema),
        Deleted: schema(DeletedSchema),
        Vm: schema(VmSchema),
        SleepRequest: schema(SleepBody),
        Activity: schema(ActivitySchema),
      },
    },
    paths: {
      "/vms/{vm_id}/routes": {
        post: {
          summary: "Create a route",
          description: `Reserved subdomains: ${[...RESERVED_SUBDOMAINS].join(", ")}. Bodies up to 64 KiB; no Content-Type is read as JSON.`,
          parameters: [vmIdParam],
          requestBody: { required: true, content: { "application/json": { schema: { $ref: "#/components/schemas/CreateRoute" } } } },
          responses: {
            "201": routeJson("The new route.", { $ref: "#/components/schemas/Route" }),
            "400": err("Invalid body: not JSON, not an object, unknown field, wrong type, port out of range, bad or reserved subdomain.", TEXT.port),
            "401": unauthorized,
            "404": notFound,
            "409": err("The subdomain is taken.", TEXT.taken("myapp")),
            "413": err("Body over 64 KiB.", "request body too large (limit 64 KiB)"),
            "415": err("Content-Type other than JSON.", 'unsupported content type "text/plain": send application/json'),
            "503": unavailable,
          },
        },
        get: {
          summary: "List a VM's routes, newest first",
          parameters: [vmIdParam],
          responses: {
            "200": routeJson("The VM's routes (`[]` when none).", { type: "array", items: { $ref: "#/components/schemas/Route" } }),
            "401": unauthorized,
            "404": notFound,
            "503": unavailable,
          },
        },
      },
      "/routes/{route_id}": {
        get: {
          summary: "Get a route",
          parameters: [routeIdParam],
          responses: { "200": routeJson("The route.", { $ref: "#/components/schemas/Route" }), "401": unauthorized, "404": notFound },
        },
        delete: {
          summary: "Delete a route",
          parameters: [routeIdParam],
          responses: { "200": routeJson("Deleted.", { $ref: "#/components/schemas/Deleted" }), "401": unauthorized, "404": notFound },
        },
      },
      "/vms/{vm_id}/sleep": {
        post: {
          summary: "Put a running VM to sleep now",
          description:
            "Runs the zero-loss sleep the idle sweeper runs: the VM's routers leave Traefik, the work in flight finishes " +
            "(up to HATCH_IDLE_DRAIN_TIMEOUT), then the VM is snapshotted or stopped; the answer comes once it sleeps. " +
            "A request arriving meanwhile is held and wakes the VM afterwards. The body is optional (none, or `{}`: HATCH_IDLE_ACTION). " +
            "Error answers also carry a `code` (not_running, sleep_in_progress, sleep_cancelled, sleep_failed, platform_unavailable, sleep_unconfirmable).",
          parameters: [vmIdParam],
          requestBody: { required: false, content: { "application/json": { schema: { $ref: "#/components/schemas/SleepRequest" } } } },
          responses: {
            "200": routeJson("The VM, now asleep (`snapshotted` or `stopped`), as the VM platform reports it.", { $ref: "#/components/schemas/Vm" }),
            "400": errs("Invalid body: not JSON, not an object, unknown field, or an action other than snapshot/stop.", {
              unknown_field: 'unknown field "force"',
              bad_action: 'action must be "snapshot" or "stop"',
            }),
            "401": unauthorized,
            "404": notFound,
            "409": errs("The VM is not running, another sleep of it is under way, or this one was cancelled (a request arrived, the drain timed out, a wake holds the VM).", {
              not_running: "vm is not running (current state: snapshotted)",
              sleep_in_progress: "a sleep of this vm is already under way (idle, draining since 2025-01-01T12:00:00Z)",
              sleep_cancelled: "sleep cancelled: a request arrived",
            }),
            "413": err("Body over 64 KiB.", "request body too large (limit 64 KiB)"),
            "415": err("Content-Type other than JSON.", 'unsupported content type "text/plain": send application/json'),
            "502": err("The VM platform refused or failed the snapshot/stop; the VM's routers are back.", "the VM platform did not put the vm to sleep: failed to snapshot vm: answered 500"),
            "503": errs("The VM platform or the database is unreachable, or no sleep can be made safely (a Traefik polls this API but HATCH_TRAEFIK_API_URLS is unset); retry.", {
              platform_unavailable: "VM platform unavailable: try again shortly",
              sleep_unconfirmable:
                "cannot put the vm to sleep safely: a Traefik polls this API's /traefik/config but HATCH_TRAEFIK_API_URLS is unset: nothing can confirm it stopped routing to the vm",
            }),
          },
        },
      },
      "/vms/{vm_id}/activity": {
        get: {
          summary: "Why a VM is or is not asleep",
          description: "Last activity, open connections, and when the idle sweeper will put it to sleep (or why it will not).",
          parameters: [vmIdParam],
          responses: {
            "200": routeJson("The VM's activity.", { $ref: "#/components/schemas/Activity" }),
            "401": unauthorized,
            "404": notFound,
            "503": unavailable,
          },
        },
      },
      "/traefik/config": {
        get: {
          summary: "Traefik dynamic configuration (HTTP provider)",
          description: "Byte-stable JSON; ETag and If-None-Match. Bearer HATCH_TRAEFIK_TOKEN when set, else loopback clients only.",
          security: [{ bearer: [] }],
          responses: { "200": { description: "The dynamic configuration." }, "304": { description: "Unchanged." }, "401": unauthorized, "403": err("Not a loopback client and no token configured.", "forbidden"), "503": err("Not built yet.", "traefik config not built yet") },
        },
      },
      "/traefik/config.yaml": { get: { summary: "The same configuration as YAML", security: [{ bearer: [] }], responses: { "200": { description: "YAML." } } } },
      "/vms/{vm_id}/exec": {
        post: {
          summary: "Run a command in a VM (relayed to the VM platform)",
          description: "Relayed to the VM platform as sent, with the caller's credentials. No total deadline: it lasts as long as the command and its caller. Bodies up to 10 MiB.",
          parameters: [vmIdParam],
          requestBody: {
            required: true,
            content: { "application/json": { schema: { type: "object", required: ["command"], properties: { command: { type: "string" } } } } },
          },
          responses: {
            "200": routeJson("The command's output, buffered.", {
              type: "object",
              properties: { stdout: { type: "string" }, stderr: { type: "string" }, exit_code: { type: "integer" } },
            }),
            "401": unauthorized,
            "404": notFound,
            "413": err("The body is over 10 MiB.", "request body too large (limit 10 MiB)"),
            "503": unavailable,
          },
        },
      },
      "/vms/{vm_id}/connect": {
        post: {
          summary: "Sign an SSH key for a VM (relayed to the VM platform)",
          description: "Relayed to the VM platform as sent, with the caller's credentials: a public key in, an SSH certificate for the VM's gateway out (the platform wakes a sleeping VM on connect).",
          parameters: [vmIdParam],
          requestBody: {
            required: true,
            content: { "application/json": { schema: { type: "object", required: ["public_key"], properties: { public_key: { type: "string" } } } } },
          },
          responses: {
            "200": routeJson("The platform's answer (an SSH certificate and how to connect).", { type: "object" }),
            "401": unauthorized,
            "404": notFound,
            "503": unavailable,
          },
        },
      },
      "/healthz": { get: { summary: "Process is up", security: [], responses: { "200": { description: '{"status":"ok"}' } } } },
      "/readyz": { get: { summary: "Database, migrations and VM platform reachable", security: [], responses: { "200": { description: "Ready." }, "503": err("A check failed.", "not ready: database") } } },
      "/metrics": { get: { summary: "Prometheus metrics", security: [], responses: { "200": { description: "Text exposition format." } } } },
      "/admin/import-hatch": {
        post: {
          summary: "Import Hatch's route rows (what `hatch-proxy import-hatch` sends to a running instance on the embedded database)",
          description: "Same rules and report as the command. Needs an operator key (one of HATCH_API_KEYS); a key verified per user gets 403.",
          requestBody: { required: true, content: { "application/json": { schema: schema(ImportBody) } } },
          responses: {
            "200": { description: "The report: `dry_run`, `imported`, `already_here`, `not_imported` and one entry per row with its `outcome` (and `why`)." },
            "400": err("A body that is not Hatch's rows.", "routes.0.target_port must be a number"),
            "401": unauthorized,
            "403": err("A user's key.", "importing routes needs an operator key (one of HATCH_API_KEYS), not a user's key"),
            "413": err("Over 16 MiB.", "request body too large (limit 16384 KiB)"),
            "503": unavailable,
          },
        },
      },
    },
  };
}
