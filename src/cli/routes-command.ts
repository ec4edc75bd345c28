/** `hatch-proxy routes …`: the route API for people (tables) and scripts (--json). */
import { callApi, type ApiTarget } from "./http-client.ts";
import { formatTable } from "./table.ts";
import { UsageError } from "./targets.ts";
import type { Subcommand } from "./subcommand.ts";

interface RouteJson {
  id: string;
  vm_id: string;
  subdomain: string;
  target_port: number;
  auto_wake: boolean;
  created_at: string;
}

/** Aligned table of routes: ID, VM, SUBDOMAIN, PORT, AUTO-WAKE, CREATED. */
export function routesTable(routes: readonly RouteJson[]): string[] {
  return formatTable(
    ["ID", "VM", "SUBDOMAIN", "PORT", "AUTO-WAKE", "CREATED"],
    routes.map((r) => [String(r.id), String(r.vm_id), String(r.subdomain), String(r.target_port), r.auto_wake ? "yes" : "no", String(r.created_at)]),
  );
}

const id = encodeURIComponent;

export const ROUTE_SUBCOMMANDS: Subcommand<ApiTarget>[] = [
  {
    name: "create",
    synopsis: "routes create <vm> --port <port> [--subdomain <name>] [--no-auto-wake]",
    about: "Route <subdomain>.<base domain> to a port of a VM (a random subdomain when none is given).",
    positionals: ["vm"],
    options: {
      port: { type: "string", help: "guest port the route forwards to (required)" },
      subdomain: { type: "string", help: "lowercase letters, digits and inner hyphens; default: 12 random characters" },
      "no-auto-wake": { type: "boolean", help: "answer 503 instead of waking the VM when it sleeps" },
    },
    async run({ target, args, values, fetch, print }) {
      const port = values.port;
      if (typeof port !== "string") throw new UsageError("routes create: --port is required");
      if (!/^\d{1,9}$/.test(port)) throw new UsageError(`routes create: --port must be a whole number, not ${JSON.stringify(port)}`);
      const body: Record<string, unknown> = { target_port: Number(port) };
      if (typeof values.subdomain === "string") body.subdomain = values.subdomain;
      if (values["no-auto-wake"] === true) body.auto_wake = false;
      const answer = await callApi(fetch, target, "POST", `/vms/${id(args[0]!)}/routes`, body);
      print(answer, () => routesTable([answer.json as RouteJson]));
    },
  },
  {
    name: "list",
    synopsis: "routes list <vm>",
    about: "The routes of a VM, newest first.",
    positionals: ["vm"],
    options: {},
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "GET", `/vms/${id(args[0]!)}/routes`);
      const routes = answer.json as RouteJson[];
      print(answer, () => (routes.length ? routesTable(routes) : [`no routes for ${args[0]}`]));
    },
  },
  {
    name: "get",
    synopsis: "routes get <route>",
    about: "One route by id.",
    positionals: ["route"],
    options: {},
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "GET", `/routes/${id(args[0]!)}`);
      print(answer, () => routesTable([answer.json as RouteJson]));
    },
  },
  {
    name: "delete",
    synopsis: "routes delete <route>",
    about: "Delete a route by id.",
    positionals: ["route"],
    options: {},
    async run({ target, args, fetch, print }) {
      const answer = await callApi(fetch, target, "DELETE", `/routes/${id(args[0]!)}`);
      print(answer, () => [`deleted route ${args[0]}`]);
    },
  },
];
