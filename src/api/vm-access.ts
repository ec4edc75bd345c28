/** The VM a caller may see: the one check every `/vms/{vm_id}/…` endpoint starts with. */
import { AppError, notFound } from "../errors.ts";
import { PlatformUnavailableError, type Vm, type VmPlatform } from "../vms/platform.ts";

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
    if (err instanceof PlatformUnavailableError) {
      throw new AppError(503, "VM platform unavailable: try again shortly", { code: "platform_unavailable", cause: err });
    }
    throw err;
  }
  if (!vm) throw notFound();
  return vm;
}
