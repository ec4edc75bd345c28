/**
 * The cached view of VM states that the Traefik config and the wake sidecar read: refreshed by
 * polling the platform, and updated at once by the states this service causes (wakes).
 */
import type { Logger } from "../log.ts";
import type { Vm, VmDirectory, VmPlatform } from "./platform.ts";

export interface VmDirectoryOptions {
  platform: VmPlatform;
  intervalMs: number;
  log: Logger;
  /**
   * Called once the platform answered a definite "no such VM" (404) for a VM this directory knew
   * (the caller deletes its routes, as Hatch does). Never called on a timeout or 5xx.
   * A failure is retried on the next refresh.
   */
  onVmGone?: ((vmId: string) => Promise<void>) | undefined;
}

/** A VmDirectory over `platform`; call start() to poll every `intervalMs`. */
export function createVmDirectory(opts: VmDirectoryOptions): VmDirectory {
  const { platform, log } = opts;
  const cache = new Map<string, Vm>();
  const listeners = new Set<() => void>();
  // Sequence numbers let a refresh skip VMs recorded after it asked the platform, so a slow
  // list cannot overwrite a fresher state this service just caused (e.g. a wake).
  let seq = 0;
  const touched = new Map<string, number>();
  const goneRetry = new Set<string>();
  let version = 0;
  let ready = false;
  let timer: NodeJS.Timeout | undefined;
  let running = false;
  let inFlight: Promise<void> | undefined;
  let queued: Promise<void> | undefined;
  let failing = false;

  const differs = (a: Vm | undefined, b: Vm | undefined) => a?.state !== b?.state || a?.guest_ip !== b?.guest_ip;

  const fire = () => {
    version += 1;
    for (const l of [...listeners]) {
      try {
        l();
      } catch (err) {
        log.error("vm directory listener failed", { err });
      }
    }
  };

  /** Stores `vm`; true when the state or address changed. */
  const put = (vm: Vm): boolean => {
    const changed = differs(cache.get(vm.id), vm);
    cache.set(vm.id, vm);
    return changed;
  };

  const gone = async (id: string) => {
    if (!opts.onVmGone) return;
    try {
      await opts.onVmGone(id);
      goneRetry.delete(id);
    } catch (err) {
      goneRetry.add(id);
      log.error("cleanup of a deleted vm failed; will retry", { vm_id: id, err });
    }
  };

  const remove = async (id: string): Promise<boolean> => {
    const had = cache.delete(id);
    touched.delete(id);
    if (had) {
      log.info("vm no longer exists on the platform", { vm_id: id });
      await gone(id);
    }
    return had;
  };

  const refreshAllOnce = async () => {
    const startSeq = seq;
    const fresh = (id: string) => (touched.get(id) ?? 0) <= startSeq;
    const retries = [...goneRetry];
    const listed = await platform.list();
    let changed = false;
    const seen = new Set<string>();
    for (const vm of listed) {
      seen.add(vm.id);
      if (fresh(vm.id) && put(vm)) changed = true;
    }
    for (const id of [...cache.keys()]) {
      if (seen.has(id) || !fresh(id)) continue;
      // Missing from the list is not proof: only a definite 404 on the VM itself is.
      let vm: Vm | undefined;
      try {
        vm = await platform.get(id);
      } catch (err) {
        log.warn("vm missing from the list could not be confirmed; kept", { vm_id: id, err });
        continue;
      }
      if (!fresh(id)) continue;
      if (vm === undefined) {
        if (await remove(id)) changed = true;
      } else if (put(vm)) {
        changed = true;
      }
    }
    for (const id of retries) if (!cache.has(id)) await gone(id);
    ready = true;
    if (changed) fire();
  };

  const refreshAll = (): Promise<void> => {
    // One refresh at a time; a call during one runs once more afterwards (it may want newer data).
    if (!inFlight) {
      inFlight = refreshAllOnce().finally(() => {
        inFlight = undefined;
      });
      return inFlight;
    }
    queued ??= inFlight
      .catch(() => {})
      .then(() => {
        queued = undefined;
        return refreshAll();
      });
    return queued;
  };

  const poll = async () => {
    try {
      await refreshAll();
      if (failing) log.info("vm sync recovered");
      failing = false;
    } catch (err) {
      // One warning per outage, not one per poll.
      if (!failing) log.warn("vm sync failed; keeping the last known states", { err });
      else log.debug("vm sync still failing", { err });
      failing = true;
    }
    if (running) schedule();
  };

  const schedule = () => {
    timer = setTimeout(() => void poll(), opts.intervalMs);
    timer.unref();
  };

  return {
    peek: (id) => cache.get(id),
    all: () => cache,
    async refreshOne(id) {
      const startSeq = seq;
      const vm = await platform.get(id);
      if ((touched.get(id) ?? 0) > startSeq) return cache.get(id);
      if (vm === undefined) {
        if (await remove(id)) fire();
        return undefined;
      }
      if (put(vm)) fire();
      return vm;
    },
    refreshAll,
    record(vm) {
      seq += 1;
      touched.set(vm.id, seq);
      if (put(vm)) fire();
    },
    onChange(listener) {
      listeners.add(listener);
      return () => void listeners.delete(listener);
    },
    get version() {
      return version;
    },
    get ready() {
      return ready;
    },
    start() {
      if (running) return;
      running = true;
      schedule();
    },
    stop() {
      running = false;
      if (timer) clearTimeout(timer);
      timer = undefined;
    },
  };
}
