import * as v from "valibot";
import type { RouteRow } from "../db/schema.ts";
import { SUBDOMAIN_LABEL as SUBDOMAIN_RE } from "../subdomain.ts";

/** Hatch's subdomain rule (defined in src/subdomain.ts). */
export { SUBDOMAIN_RE };

/** Subdomains Hatch refuses (they collide with infrastructure names). */
export const RESERVED_SUBDOMAINS: ReadonlySet<string> = new Set([
  "api", "www", "admin", "app", "dashboard", "mail", "smtp", "ftp", "ssh", "ns1", "ns2", "status", "docs", "help",
  "support", "billing", "login", "auth", "oauth", "cdn", "static", "assets", "media", "hatch", "console", "panel",
  "grafana", "prometheus", "traefik", "minio", "postgres", "db", "redis", "internal",
]);

export const TEXT = {
  port: "target_port must be between 1 and 65535",
  subdomain: "subdomain must be lowercase alphanumeric with optional hyphens (max 63 chars)",
  reserved: (s: string) => `subdomain "${s}" is reserved`,
  taken: (s: string) => `subdomain "${s}" is already in use`,
};

/**
 * Shape of `POST /vms/{vm_id}/routes`, checked in Hatch's order: first the types and unknown
 * fields (Hatch's JSON decoder), then the port range, the subdomain's form, and reserved names.
 * `null` counts as absent for optional fields, as with Go's decoder.
 */
export const CreateRouteTypes = v.object({
  subdomain: v.nullish(v.string("subdomain must be a string")),
  target_port: v.pipe(
    v.number("target_port must be an integer (a JSON number, not a string)"),
    v.integer("target_port must be an integer, not a fraction"),
  ),
  auto_wake: v.nullish(v.boolean("auto_wake must be a boolean (true or false)")),
});

export const CreateRouteBody = v.pipe(
  v.object({
    subdomain: v.pipe(
      v.nullish(v.string()),
      v.description("Lowercase alphanumerics and inner hyphens, max 63 characters, not reserved. Omitted: 12 random characters."),
    ),
    target_port: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(65535), v.description("Port inside the VM.")),
    auto_wake: v.pipe(v.nullish(v.boolean()), v.description("Wake the VM when a request arrives while it sleeps. Default true.")),
  }),
  v.metadata({ example: { subdomain: "myapp", target_port: 8080, auto_wake: true } }),
);

export const RouteSchema = v.object({
  id: v.pipe(v.string(), v.description("Route id, rt_ + random.")),
  vm_id: v.string(),
  subdomain: v.string(),
  target_port: v.number(),
  auto_wake: v.boolean(),
  created_at: v.pipe(v.string(), v.description("ISO 8601, UTC.")),
  updated_at: v.string(),
});

export const ErrorSchema = v.object({ error: v.string(), request_id: v.optional(v.string()) });
export const DeletedSchema = v.object({ status: v.literal("deleted") });

export type RouteJson = v.InferOutput<typeof RouteSchema>;

/** Hatch's timestamp style: second precision, `Z`. */
export function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Shapes a database row into Hatch's route object; nothing else leaves (not the owner). */
export function toRouteJson(r: RouteRow): RouteJson {
  return {
    id: r.id,
    vm_id: r.vmId,
    subdomain: r.subdomain,
    target_port: r.targetPort,
    auto_wake: r.autoWake,
    created_at: isoSeconds(r.createdAt),
    updated_at: isoSeconds(r.updatedAt),
  };
}

/** Validates a parsed body in Hatch's order; returns the first problem's text, or the clean input. */
export function checkCreateRoute(body: unknown):
  | { ok: true; value: { subdomain: string | undefined; target_port: number; auto_wake: boolean } }
  | { ok: false; error: string } {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return { ok: false, error: `request body must be a JSON object, not ${body === null ? "null" : Array.isArray(body) ? "an array" : typeof body}` };
  }
  // Own keys only: `in` also finds what every object inherits (constructor, toString, __proto__…).
  const unknown = Object.keys(body).filter((k) => !Object.hasOwn(CreateRouteTypes.entries, k));
  if (unknown.length) return { ok: false, error: `unknown field${unknown.length > 1 ? "s" : ""} ${unknown.map((k) => JSON.stringify(k)).join(", ")}` };
  const rec = body as Record<string, unknown>;
  if (rec.target_port === undefined || rec.target_port === null) return { ok: false, error: "target_port is required (an integer from 1 to 65535)" };
  const typed = v.safeParse(CreateRouteTypes, body);
  if (!typed.success) return { ok: false, error: typed.issues[0]!.message };
  const { subdomain, target_port, auto_wake } = typed.output;
  if (target_port < 1 || target_port > 65535) return { ok: false, error: TEXT.port };
  const sub = subdomain === null || subdomain === undefined || subdomain === "" ? undefined : subdomain;
  if (sub !== undefined && !SUBDOMAIN_RE.test(sub)) return { ok: false, error: TEXT.subdomain };
  if (sub !== undefined && RESERVED_SUBDOMAINS.has(sub)) return { ok: false, error: TEXT.reserved(sub) };
  return { ok: true, value: { subdomain: sub, target_port, auto_wake: auto_wake ?? true } };
}
