/** Answers a proxy gives in place of the VM's, and the errors that carry them. */

/** A public answer that is not the VM's: status and JSON body `{"error": …}`. */
export interface Failure {
  status: number;
  error: string;
  detail?: string | undefined;
  headers?: Record<string, string> | undefined;
}

/** Carries a Failure through promise chains (a wake flight's waiters all get the same one). */
export class FailureError extends Error {
  constructor(readonly failure: Failure) {
    super(failure.error);
  }
}

/** The wake did not finish within HATCH_PROXY_WAKE_TIMEOUT. */
export class WakeTimeoutError extends Error {}
/** The process is stopping: held requests are answered, not dropped. */
export class ShuttingDownError extends Error {}

/** A VM made without a network (Hatch's `enable_network: false`): nothing can reach it, so nothing is routed to it. */
export const NO_NETWORK: Failure = { status: 503, error: "vm has no network" };

export const SHUTTING_DOWN: Failure = { status: 503, error: "proxy is shutting down", headers: { "retry-after": "1" } };
