/** Readiness = the VM's target port accepts a TCP connection, probed at a short fixed interval. */
import { connect } from "node:net";

/** The port did not accept a connection before the deadline. */
export class ReadyTimeoutError extends Error {
  constructor(host: string, port: number) {
    super(`${host}:${port} did not accept a connection in time`);
    this.name = "ReadyTimeoutError";
  }
}

export interface ProbeOptions {
  /** Absolute time (Date.now() scale) after which the wait fails. */
  deadline: number;
  /** Pause between the starts of two probes. */
  intervalMs?: number;
  /** Each probe's own connect timeout, so a black-holed SYN cannot stall the loop. */
  connectTimeoutMs?: number;
  signal?: AbortSignal | undefined;
}

/** Tries one TCP connect; resolves true on success, false on refusal, timeout or any error. */
export function probeOnce(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const timer = setTimeout(() => finish(false), timeoutMs);
    function finish(ok: boolean) {
      clearTimeout(timer);
      socket.removeAllListeners();
      socket.on("error", () => {});
      socket.destroy();
      resolve(ok);
    }
    socket.once("connect", () => finish(true));
    socket.once("error", () => finish(false));
  });
}

/** Resolves (with the number of probes) once host:port accepts a connection; rejects with ReadyTimeoutError or the abort reason. */
export async function waitForPort(host: string, port: number, opts: ProbeOptions): Promise<number> {
  const interval = opts.intervalMs ?? 25;
  const connectTimeout = opts.connectTimeoutMs ?? 200;
  for (let attempt = 1; ; attempt++) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    const start = Date.now();
    const left = opts.deadline - start;
    if (left <= 0) throw new ReadyTimeoutError(host, port);
    if (await probeOnce(host, port, Math.max(1, Math.min(connectTimeout, left)))) return attempt;
    const pause = Math.min(interval - (Date.now() - start), opts.deadline - Date.now());
    if (pause > 0) await delay(pause, opts.signal);
  }
}

function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
