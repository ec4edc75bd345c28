/**
 * `POST /admin/import-hatch`: takes Hatch's route rows and imports them the way
 * `hatch-proxy import-hatch` does on the database (same rules, same report). It exists for a
 * running instance on the embedded database, which only its own process can open: the CLI then
 * sends the rows here instead, and the product keeps serving while they come in.
 */
import type { Hono } from "hono";
import * as v from "valibot";
import { AppError } from "../errors.ts";
import type { ApiDeps, ApiEnv } from "./deps.ts";
import { readJsonBody } from "./body.ts";
import { hatchRouteFromJson, importRoutes, reportJson } from "./route-import.ts";

export const IMPORT_PATH = "/admin/import-hatch";

/** Bodies up to this size: a Hatch's whole route table in one request (about 40,000 rows). */
export const MAX_IMPORT_BODY = 16 * 1024 * 1024;

const text = v.string("must be a string");
const timestamp = v.pipe(text, v.isoTimestamp("must be an ISO 8601 timestamp"));

/** The request: Hatch's rows as read from its database, checked for shape here and for the route rules by the import. */
export const ImportBody = v.strictObject({
  dry_run: v.optional(v.boolean("must be true or false"), false),
  routes: v.array(
    v.strictObject({
      id: text,
      vm_id: text,
      subdomain: text,
      target_port: v.number("must be a number"),
      auto_wake: v.boolean("must be true or false"),
      owner: text,
      created_at: timestamp,
      updated_at: timestamp,
    }),
    "must be an array of Hatch's route rows",
  ),
});

const BODY_SHAPE = 'request body must be a JSON object: {"dry_run": false, "routes": [...]}';

/** One line for the first problem with a body: which field, and what is wrong with it. */
function describeIssue(issue: v.BaseIssue<unknown>): string {
  const path = issue.path?.map((p) => String(p.key)).join(".");
  if (!path) return BODY_SHAPE;
  if (issue.expected === "never") return `unknown field "${path}"`;
  if (issue.kind === "schema" && issue.received === "undefined") return `${path} is missing`;
  return `${path} ${issue.message}`;
}

/** Registers the endpoint; `requireAuth` has run before it (any key of HATCH_API_KEYS). */
export function registerImportEndpoint(app: Hono<ApiEnv>, deps: ApiDeps): void {
  app.post(IMPORT_PATH, async (c) => {
    // A key verified per user sees only that user's routes: an import writes everyone's.
    if (c.get("principal").scoped) throw new AppError(403, "importing routes needs an operator key (one of HATCH_API_KEYS), not a user's key");
    const body = await readJsonBody(c, MAX_IMPORT_BODY);
    if (typeof body !== "object" || body === null || Array.isArray(body)) throw new AppError(400, BODY_SHAPE);
    const parsed = v.safeParse(ImportBody, body);
    if (!parsed.success) throw new AppError(400, describeIssue(parsed.issues[0]!));
    const report = await importRoutes(deps.database, parsed.output.routes.map(hatchRouteFromJson), parsed.output.dry_run);
    c.get("log").info("routes imported from hatch", { dry_run: report.dryRun, imported: report.imported, already_here: report.present, not_imported: report.refused });
    return c.json(reportJson(report));
  });
}
