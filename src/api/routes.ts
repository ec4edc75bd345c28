import type { Hono } from "hono";
import { AppError, notFound } from "../errors.ts";
import { deleteRoute, getRoute, insertRoute, listRoutesByVm, SubdomainTakenError } from "../db/routes.repo.ts";
import { newRouteId, randomAlnum } from "../ids.ts";
import { readJsonBody } from "./body.ts";
import { ID_RE, vmForPrincipal } from "./vm-access.ts";
import { checkCreateRoute, RESERVED_SUBDOMAINS, TEXT, toRouteJson } from "./routes.schemas.ts";
import type { ApiDeps, ApiEnv } from "./deps.ts";

/** Registers Hatch's Routes API: create, list per VM, get and delete one. */
export function registerRouteEndpoints(app: Hono<ApiEnv>, deps: ApiDeps): void {
  const { database, directory, tenancy } = deps;

  app.post("/vms/:vm_id/routes", async (c) => {
    const principal = c.get("principal");
    const input = checkCreateRoute(await readJsonBody(c));
    if (!input.ok) throw new AppError(400, input.error);
    const vmId = c.req.param("vm_id");
    const vm = await vmForPrincipal(deps, vmId, principal);
    directory.record(vm);
    const { target_port, auto_wake } = input.value;
    // A generated subdomain is never reserved and is retried when the UNIQUE index says it is taken.
    const attempts = input.value.subdomain ? 1 : 5;
    for (let i = 0; ; i++) {
      let subdomain = input.value.subdomain;
      while (!subdomain || RESERVED_SUBDOMAINS.has(subdomain)) subdomain = randomAlnum(12);
      try {
        const row = await insertRoute(database, {
          id: newRouteId(),
          vmId,
          subdomain,
          targetPort: target_port,
          autoWake: auto_wake,
          owner: principal.userId,
        });
        c.get("log").info("route created", { route_id: row.id, vm_id: vmId, subdomain });
        // The owner's key, kept now that they have a route: the VM is woken and slept with it.
        if (principal.scoped) await tenancy?.offer(principal.userId, principal.key, true);
        return c.json(toRouteJson(row), 201);
      } catch (err) {
        if (!(err instanceof SubdomainTakenError)) throw err;
        if (i + 1 >= attempts) throw new AppError(409, TEXT.taken(subdomain));
      }
    }
  });

  app.get("/vms/:vm_id/routes", async (c) => {
    const principal = c.get("principal");
    const vmId = c.req.param("vm_id");
    await vmForPrincipal(deps, vmId, principal);
    const rows = await listRoutesByVm(database, vmId, principal.scoped ? principal.userId : undefined);
    return c.json(rows.map(toRouteJson));
  });

  app.get("/routes/:route_id", async (c) => {
    const principal = c.get("principal");
    const id = c.req.param("route_id");
    const row = ID_RE.test(id) ? await getRoute(database, id) : undefined;
    if (!row || (principal.scoped && row.owner !== principal.userId)) throw notFound();
    return c.json(toRouteJson(row));
  });

  app.delete("/routes/:route_id", async (c) => {
    const principal = c.get("principal");
    const id = c.req.param("route_id");
    const row = ID_RE.test(id) ? await deleteRoute(database, id, principal.scoped ? principal.userId : undefined) : undefined;
    if (!row) throw notFound();
    c.get("log").info("route deleted", { route_id: row.id, vm_id: row.vmId, subdomain: row.subdomain });
    return c.json({ status: "deleted" as const });
  });
}
