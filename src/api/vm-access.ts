/** The VM a caller may see: the one check every `/vms/{vm_id}/…` endpoint starts with. */
import { AppError, notFound } from "../errors.ts";
import type { Tenancy } from "../tenancy/tenancy.ts";
import { CredentialRejectedError, PlatformUnavailableError, type Vm, type VmPlatform } from "../vms/platform.ts";
import type { Principal } from "./auth.ts";

/** VM and route ids are opaque, but anything outside this shape cannot exist: 404 without asking. */
export const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

/**
 * The VM as the caller may see it (`key`: the caller's own key when keys are per user), or 404;
 * a platform outage is a 503, never a 500.
 */
export async function vmForCaller(platform: VmPlatform, vmId: string, key: string | undefined): Promise<Vm> {
  if (!ID_RE.test(vmId)) throw notFound();
  let vm: Vm | undefined;
  try {
    vm = await platform.get(vmId, { userKey: key });
  } catch (err) {
    // The platform refused the caller's own key (revoked since our verifier's answer was cached): Hatch's 401.
    if (err instanceof CredentialRejectedError && key !== undefined) throw new AppError(401, "invalid api key", { code: "platform_refused_key", cause: err });
    if (err instanceof PlatformUnavailableError) {
      throw new AppError(503, "VM platform unavailable: try again shortly", { code: "platform_unavailable", cause: err });
    }
    throw err;
  }
  if (!vm) throw notFound();
  return vm;
}

/**
 * The VM as `principal` may see it (their own key when keys are per user), or 404. Per user, routes
 * of that VM without an owner become the caller's: the platform just said the VM is theirs.
 */
export async function vmForPrincipal(deps: { platform: VmPlatform; tenancy?: Tenancy | undefined }, vmId: string, principal: Principal): Promise<Vm> {
  const vm = await vmForCaller(deps.platform, vmId, principal.scoped ? principal.key : undefined);
  if (principal.scoped) await deps.tenancy?.claim(vmId, principal.userId, principal.key);
  return vm;
}
