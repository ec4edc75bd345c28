/** The public answers the lifecycle gives in place of a VM's: a platform outage, a failed wake, a full queue. */
import { formatDuration, type Config } from "../config.ts";
import { LockTimeoutError } from "../db/client.ts";
import type { Logger } from "../log.ts";
import { PlatformUnavailableError, VmAccessError, WakeError } from "../vms/platform.ts";
import { FailureError, SHUTTING_DOWN, ShuttingDownError, WakeTimeoutError, type Failure } from "./failure.ts";
import { ReadyTimeoutError } from "./ready.ts";

export class LifecycleAnswers {
  /** The wake timeout's text (also used when a replay runs out of time). */
  readonly timeoutText: string;

  constructor(
    private readonly config: Config,
    private readonly log: Logger,
  ) {
    this.timeoutText = `vm did not become ready within ${formatDuration(config.wakeTimeoutMs)} (HATCH_PROXY_WAKE_TIMEOUT)`;
  }

  /** The platform is down (a 503 the client may retry), or hatch-proxy holds no key that may act on the VM (a 503 that says why). */
  platformDown(err: unknown, vmId: string): Failure {
    if (err instanceof VmAccessError) return this.noAccess(err, vmId);
    this.log.warn("vm platform unavailable", { vm: vmId, err });
    return { status: 503, error: "vm platform unavailable", headers: { "retry-after": "1" } };
  }

  /** No key may act on the VM: retrying does not help until its owner calls, so no Retry-After. */
  private noAccess(err: VmAccessError, vmId: string): Failure {
    this.log.warn("vm cannot be reached: no key may act on it", { vm: vmId, reason: err.reason });
    return { status: 503, error: err.message };
  }

  /** The public answer for a failed wake. */
  wakeFailure(err: unknown, vmId: string): Failure {
    if (err instanceof FailureError) return err.failure;
    if (err instanceof VmAccessError) return this.noAccess(err, vmId);
    if (err instanceof ShuttingDownError) return SHUTTING_DOWN;
    if (err instanceof WakeTimeoutError || err instanceof ReadyTimeoutError || err instanceof LockTimeoutError) {
      return { status: 504, error: this.timeoutText };
    }
    if (err instanceof WakeError) {
      if (err.reason === "timeout") return { status: 504, error: this.timeoutText };
      if (err.reason === "not_found") return { status: 502, error: "vm not found" };
      if (err.reason === "unsupported") return { status: 503, error: err.message };
      return { status: 503, error: "failed to wake vm", detail: err.message };
    }
    if (err instanceof PlatformUnavailableError) return { status: 503, error: "failed to wake vm", detail: "vm platform unavailable" };
    this.log.error("wake failed unexpectedly", { vm: vmId, err });
    return { status: 503, error: "failed to wake vm", detail: "internal error" };
  }

  /** A 503 for a VM that has more held requests than HATCH_WAKE_MAX_WAITERS. */
  tooManyWaiters(vmId: string): Failure {
    return {
      status: 503,
      error: `too many requests waiting for vm ${vmId} to wake (HATCH_WAKE_MAX_WAITERS=${this.config.wakeMaxWaiters})`,
      headers: { "retry-after": "2" },
    };
  }
}
