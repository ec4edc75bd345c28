/** The simulator as an in-process VmPlatform (no HTTP hop), with the same scoping as its REST API. */
import { CredentialRejectedError, isStateConflictText, SleepError, WakeError, type CallOptions, type VmPlatform } from "../platform.ts";
import type { SimulatorCore } from "./core.ts";
import { SimulatorError, type SimVm } from "./types.ts";

/**
 * A VmPlatform of kind "simulator" over `core`; `userKey` scopes like a request's API key, and
 * `serviceKey` (HATCH_API_KEY) stands in for a call that names none, as a Hatch client sends its key.
 */
export function createSimulatorPlatform(core: SimulatorCore, serviceKey?: string): VmPlatform {
  const callerOf = (opts?: CallOptions) => {
    try {
      return core.callerOf(opts?.userKey ?? serviceKey);
    } catch (err) {
      // The simulator's own 401 (HATCH_SIM_USERS set): the key is refused, as a Hatch client reports it.
      if (err instanceof SimulatorError && err.status === 401) throw new CredentialRejectedError(`VM platform unavailable: answered 401: ${err.message}`);
      throw err;
    }
  };

  const wakeOnce = async (id: string, caller: string | undefined): Promise<SimVm> => {
    const vm = core.getVm(id, caller);
    if (!vm) throw new SimulatorError(404, "not found");
    switch (vm.state) {
      case "running":
        return vm;
      case "starting": {
        // Someone else's wake is in flight: share its outcome instead of failing with 409.
        const pending = core.pendingWake(id);
        if (pending) return pending;
        return core.restore(id, caller);
      }
      case "stopped":
        if (!core.canStart) throw new WakeError("unsupported", "cannot start a stopped VM on this platform");
        return core.start(id, caller);
      default:
        return core.restore(id, caller);
    }
  };

  return {
    kind: "simulator",
    canStart: async () => core.canStart,
    async get(id, opts) {
      return core.getVm(id, callerOf(opts));
    },
    async list(opts) {
      return core.listVms(callerOf(opts));
    },
    wake(id, opts) {
      let caller: string | undefined;
      try {
        caller = callerOf(opts);
      } catch (err) {
        return Promise.reject(err);
      }
      const woke = wakeOnce(id, caller).catch((err: unknown) => {
        throw toWakeError(err);
      });
      const { timeoutMs, signal } = opts ?? {};
      if (timeoutMs === undefined && !signal) return woke;
      return new Promise((resolve, reject) => {
        const cleanup = () => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
        };
        const timer =
          timeoutMs === undefined
            ? undefined
            : setTimeout(() => {
                cleanup();
                reject(new WakeError("timeout", `vm did not wake within ${timeoutMs} ms`));
              }, timeoutMs);
        const onAbort = () => {
          cleanup();
          reject(new WakeError("failed", "failed to wake vm: aborted"));
        };
        if (signal?.aborted) return onAbort();
        signal?.addEventListener("abort", onAbort, { once: true });
        woke.then(
          (vm) => {
            cleanup();
            resolve(vm);
          },
          (err) => {
            cleanup();
            reject(err);
          },
        );
      });
    },
    async sleep(id, action, opts) {
      const caller = callerOf(opts);
      try {
        return action === "stop" ? await core.stop(id, caller) : await core.snapshot(id, caller);
      } catch (err) {
        if (err instanceof SimulatorError) {
          if (err.status === 404) throw new SleepError("not_found", "vm not found", { cause: err });
          if (err.status === 409 || (err.status === 500 && isStateConflictText(err.message))) throw new SleepError("conflict", err.message, { cause: err });
          if (err.status === 403) throw new SleepError("limit", err.message, { cause: err });
          throw new SleepError("failed", `failed to ${action} vm: ${err.message}`, { cause: err });
        }
        throw err;
      }
    },
  };
}

function toWakeError(err: unknown): WakeError {
  if (err instanceof WakeError) return err;
  if (err instanceof SimulatorError) {
    if (err.status === 404) return new WakeError("not_found", "vm not found", { cause: err });
    if (err.status === 409 || (err.status === 500 && isStateConflictText(err.message))) return new WakeError("conflict", err.message, { cause: err });
    return new WakeError("failed", `failed to wake vm: ${err.message}`, { cause: err });
  }
  return new WakeError("failed", `failed to wake vm: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}
