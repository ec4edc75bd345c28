/** The sidecar's Prometheus metrics, on a registry of its own (the API merges it into /metrics). */
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export type WakeOutcome = "ok" | "failed" | "timeout";

export interface WakeMetrics {
  readonly registry: Registry;
  /** Counts one finished wake. */
  wake(outcome: WakeOutcome, seconds: number): void;
  /** Sets the number of requests currently held across VMs. */
  waiters(n: number): void;
  /** Counts one answered request by status code. */
  request(code: number): void;
  /** Counts one GET re-asked by Traefik's errors middleware after a direct router failed. */
  fallback(): void;
}

/** Creates the metrics on a fresh registry. */
export function createWakeMetrics(): WakeMetrics {
  const registry = new Registry();
  const wakes = new Counter({ name: "hatch_wakes_total", help: "VM wakes by outcome (ok, failed, timeout).", labelNames: ["outcome"], registers: [registry] });
  const duration = new Histogram({
    name: "hatch_wake_duration_seconds",
    help: "Time from the first held request to the VM's port answering (or the wake failing), by outcome.",
    labelNames: ["outcome"],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120],
    registers: [registry],
  });
  const waiters = new Gauge({ name: "hatch_wake_waiters", help: "Requests currently held while their VM wakes.", registers: [registry] });
  const requests = new Counter({ name: "hatch_proxy_requests_total", help: "Requests answered by the wake proxy, by status code.", labelNames: ["code"], registers: [registry] });
  const fallbacks = new Counter({
    name: "hatch_sleep_fallbacks_total",
    help: "GET/HEAD requests Traefik re-asked the sidecar for after a VM's direct router failed (a VM asleep behind Traefik's back).",
    registers: [registry],
  });
  for (const o of ["ok", "failed", "timeout"]) wakes.labels(o).inc(0);
  // Label lookups hash the label set on every call; the hot path keeps one child per code instead.
  const byCode = new Map<number, { inc(): void }>();
  return {
    registry,
    wake(outcome, seconds) {
      wakes.labels(outcome).inc();
      duration.labels(outcome).observe(seconds);
    },
    waiters(n) {
      waiters.set(n);
    },
    request(code) {
      let child = byCode.get(code);
      if (!child) {
        child = requests.labels(String(code));
        byCode.set(code, child);
      }
      child.inc();
    },
    fallback() {
      fallbacks.inc();
    },
  };
}
