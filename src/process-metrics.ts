/**
 * The metrics every hatch-proxy process serves besides its own: prom-client's default process and
 * Node.js metrics (resident memory, CPU, open fds, event-loop lag, GC, heap) and
 * `hatch_build_info{version,node} 1`.
 */
import { collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { VERSION } from "./version.ts";

let shared: Registry | undefined;

/**
 * The process's registry of them, made on first use. One per process, not one per app: the
 * collectors observe the process itself (its event loop, its GC), so a second copy would measure
 * the same thing twice and leave a second event-loop monitor running.
 */
export function processRegistry(): Registry {
  if (shared) return shared;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: "hatch_build_info",
    help: "The hatch-proxy version and Node.js version this process runs; always 1.",
    labelNames: ["version", "node"],
    registers: [registry],
  }).set({ version: VERSION, node: process.version }, 1);
  shared = registry;
  return registry;
}

/**
 * One registry for a /metrics answer: the process's metrics, then `own`. Registry.merge throws on
 * a family registered twice, so a duplicate fails every scrape (and the tests) instead of being
 * served twice.
 */
export function metricsFor(own: readonly Registry[]): Registry {
  return Registry.merge([processRegistry(), ...own]);
}
