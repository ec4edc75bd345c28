/**
 * The VM platform as the product uses it when a platform scopes every VM call to its key's user, as
 * Hatch does (another user's VM answers 404, and there is no admin key). A call that names no key
 * acts with the key of the VM's owner: the owner of its routes, whose key hatch-proxy keeps
 * (owner-keys.ts); routes without an owner, and VMs without routes, use the service key
 * (HATCH_API_KEY). So the VM sync follows every user's routed VMs, and a wake or a sleep runs as the
 * VM's owner.
 *
 * What "gone" means changes with it: a VM is gone only when every key that could see it says 404
 * and each of them speaks for its routes (the owner's own key; or, with keys not verified per user,
 * the service key). A key that may simply not see the VM, a missing or refused key: all of these
 * leave the VM unknown, never deleted.
 */
import type { Database } from "../db/client.ts";
import { deleteRoutesById, routeOwnersOfVm } from "../db/credentials.repo.ts";
import type { Logger } from "../log.ts";
import { CredentialRejectedError, SleepError, VmAccessError, WakeError, type CallOptions, type SleepAction, type Vm, type VmPlatform } from "../vms/platform.ts";
import { credentialRejected, unowned, type OwnerKeys } from "./owner-keys.ts";
import { RouteOwners } from "./route-owners.ts";

export interface TenantPlatformOptions {
  /** The platform itself; a call without `userKey` sends the service key (HATCH_API_KEY), if any. */
  base: VmPlatform;
  keys: OwnerKeys;
  database: Database;
  /** Keys are verified per user (HATCH_BETTER_AUTH_VERIFY_URL): routes have owners, and the service key speaks only for itself. */
  perUser: boolean;
  /** HATCH_API_KEY is set (per user, the service key is then one more user: the operator's). */
  hasServiceKey: boolean;
  log: Logger;
}

/** A key to ask the platform with: `key` undefined is the service key. */
interface Viewer {
  owner: string;
  key: string | undefined;
  /** Its 404 means the VM is gone for the routes it speaks for. */
  definitive: boolean;
}

interface Plan {
  viewers: Viewer[];
  /** Owners of the VM's routes that no key can act for. */
  problems: VmAccessError[];
}

/** Lists run this many at a time (one per owner with routes). */
const LIST_CONCURRENCY = 8;

export class TenantPlatform implements VmPlatform {
  readonly kind: VmPlatform["kind"];
  private readonly owners: RouteOwners;

  constructor(private readonly opts: TenantPlatformOptions) {
    this.kind = opts.base.kind;
    this.owners = new RouteOwners(opts.database, opts.perUser);
  }

  async get(id: string, callOpts?: CallOptions): Promise<Vm | undefined> {
    if (callOpts?.userKey !== undefined) return this.opts.base.get(id, callOpts);
    const plan = await this.plan(id);
    let gone = plan.problems.length === 0;
    for (const viewer of plan.viewers) {
      let vm: Vm | undefined;
      try {
        vm = await this.opts.base.get(id, { ...callOpts, userKey: viewer.key });
      } catch (err) {
        if (!(err instanceof CredentialRejectedError) || viewer.key === undefined) throw err;
        plan.problems.push(this.refused({ ...viewer, key: viewer.key }, err));
        gone = false;
        continue;
      }
      if (vm) return vm;
      if (!viewer.definitive) gone = false;
    }
    if (gone) return undefined;
    throw plan.problems[0] ?? unowned();
  }

  async list(callOpts?: CallOptions): Promise<Vm[]> {
    if (callOpts?.userKey !== undefined) return this.opts.base.list(callOpts);
    const { perUser, hasServiceKey } = this.opts;
    let owners: Awaited<ReturnType<OwnerKeys["owners"]>> = [];
    try {
      owners = await this.opts.keys.owners();
      this.owners.remember(owners);
    } catch (err) {
      // Without the database, the service key's view is what there is; VMs of owners stay as known.
      this.opts.log.debug("route owners could not be read for the vm sync", { err });
    }
    const jobs: { viewer: Viewer; only?: Set<string> }[] = [];
    if (!perUser || hasServiceKey) jobs.push({ viewer: { owner: "", key: undefined, definitive: !perUser } });
    for (const o of owners) {
      if (o.owner === "" || !("key" in o.access)) continue;
      jobs.push({ viewer: { owner: o.owner, key: o.access.key, definitive: true }, only: new Set(o.vmIds) });
    }
    if (!jobs.length) {
      // Nobody to list for: still tell an unreachable platform from a reachable one.
      try {
        await this.opts.base.list();
      } catch (err) {
        if (!(err instanceof CredentialRejectedError)) throw err;
      }
      return [];
    }
    const out = new Map<string, Vm>();
    let answered = 0;
    let firstError: unknown;
    await eachLimited(jobs, LIST_CONCURRENCY, async ({ viewer, only }) => {
      try {
        const vms = await this.opts.base.list({ ...callOpts, userKey: viewer.key });
        answered++;
        // An owner's key follows the VMs that owner routes, nothing else of theirs.
        for (const vm of vms) if ((!only || only.has(vm.id)) && !out.has(vm.id)) out.set(vm.id, vm);
      } catch (err) {
        if (err instanceof CredentialRejectedError && viewer.key !== undefined) {
          this.refused({ ...viewer, key: viewer.key }, err);
          return;
        }
        firstError ??= err;
      }
    });
    if (!answered && firstError !== undefined) throw firstError;
    return [...out.values()];
  }

  canStart(): Promise<boolean> {
    return this.opts.base.canStart?.() ?? Promise.resolve(false);
  }

  async wake(id: string, callOpts?: CallOptions & { timeoutMs?: number }): Promise<Vm> {
    if (callOpts?.userKey !== undefined) return this.opts.base.wake(id, callOpts);
    return this.actAs(id, (key) => this.opts.base.wake(id, { ...callOpts, userKey: key }), (e) => e instanceof WakeError && e.reason === "not_found");
  }

  async sleep(id: string, action: SleepAction, callOpts?: CallOptions & { timeoutMs?: number }): Promise<Vm> {
    if (callOpts?.userKey !== undefined) return this.opts.base.sleep(id, action, callOpts);
    return this.actAs(id, (key) => this.opts.base.sleep(id, action, { ...callOpts, userKey: key }), (e) => e instanceof SleepError && e.reason === "not_found");
  }

  /** Whether hatch-proxy can act on `vmId` now, without asking the platform (GET /vms/{id}/activity). */
  async access(vmId: string): Promise<{ ok: true } | { ok: false; problem: VmAccessError }> {
    const plan = await this.plan(vmId);
    if (plan.viewers.length) return { ok: true };
    return { ok: false, problem: plan.problems[0] ?? unowned() };
  }

  /**
   * After the VM sync lost `vmId` for good: deletes its routes whose owner's own key says 404 now,
   * unless any key hatch-proxy holds (another owner's, the service key) still sees the VM. Routes made
   * since, or whose owner cannot be asked, stay. How many went.
   */
  async deleteRoutesOfGoneVm(vmId: string): Promise<number> {
    const routes = await routeOwnersOfVm(this.opts.database, vmId);
    const confirmed = new Set<string>();
    const viewers: Viewer[] = [];
    for (const owner of new Set(routes.map((r) => r.owner))) {
      const v = await this.viewerFor(owner);
      if ("key" in v) viewers.push(v);
    }
    if (this.opts.hasServiceKey && !viewers.some((v) => v.key === undefined)) viewers.push({ owner: "", key: undefined, definitive: false });
    for (const viewer of viewers) {
      let vm: Vm | undefined;
      try {
        vm = await this.opts.base.get(vmId, { userKey: viewer.key });
      } catch {
        continue;
      }
      // Someone's key still sees it: it exists, whoever's 404 said otherwise.
      if (vm) return 0;
      if (viewer.definitive) confirmed.add(viewer.owner);
    }
    return deleteRoutesById(
      this.opts.database,
      routes.filter((r) => confirmed.has(r.owner)).map((r) => r.id),
    );
  }

  /** The keys that may see `vmId`, the owners of its routes first. */
  private async plan(vmId: string): Promise<Plan> {
    const owners = await this.owners.of(vmId);
    const plan: Plan = { viewers: [], problems: [] };
    // A VM no route names: the service key's view (nothing depends on it).
    if (!owners.length) plan.viewers.push({ owner: "", key: undefined, definitive: true });
    for (const owner of owners) {
      const v = await this.viewerFor(owner);
      if ("problem" in v) plan.problems.push(v.problem);
      else plan.viewers.push(v);
    }
    return plan;
  }

  private async viewerFor(owner: string): Promise<Viewer | { problem: VmAccessError }> {
    const { perUser, hasServiceKey } = this.opts;
    if (owner === "") {
      if (perUser && !hasServiceKey) return { problem: unowned() };
      return { owner, key: undefined, definitive: !perUser };
    }
    const k = await this.opts.keys.keyOf(owner);
    return "key" in k ? { owner, key: k.key, definitive: true } : k;
  }

  /**
   * Runs `act` with the first key that can act on the VM. A refused owner's key, or a 404 from a key
   * that does not speak for the VM, tries the next; a 404 from the owner's own key is the answer.
   */
  private async actAs<T>(id: string, act: (key: string | undefined) => Promise<T>, isNotFound: (e: unknown) => boolean): Promise<T> {
    const plan = await this.plan(id);
    for (const viewer of plan.viewers) {
      try {
        return await act(viewer.key);
      } catch (err) {
        if (err instanceof CredentialRejectedError && viewer.key !== undefined) {
          plan.problems.push(this.refused({ ...viewer, key: viewer.key }, err));
          continue;
        }
        if (isNotFound(err) && !viewer.definitive) continue;
        throw err;
      }
    }
    throw plan.problems[0] ?? unowned();
  }

  /** An owner's key the platform refused: not sent again until they bring another (see OwnerKeys). */
  private refused(viewer: Viewer & { key: string }, err: CredentialRejectedError): VmAccessError {
    this.opts.keys.refusedBy(viewer.owner, viewer.key);
    const problem = credentialRejected();
    problem.cause = err;
    return problem;
  }
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
