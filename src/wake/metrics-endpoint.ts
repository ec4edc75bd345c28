/**
 * The sidecar's own /metrics, for Prometheus: `GET /metrics` addressed to the sidecar itself, by a
 * Host that no route can have (`127.0.0.1:9091`, `wake:9091`). A request for a route
 * (`<subdomain>.<base>`) is proxied whatever its path, so an app's own /metrics stays the app's.
 * Open like the route API's /metrics: the wake secret guards the way to the VMs, not these counts.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Registry } from "prom-client";
import { metricsFor } from "../process-metrics.ts";
import { subdomainOf } from "./resolve.ts";

/** True for a scrape of the sidecar's metrics rather than a request for a route. */
export function isMetricsScrape(req: IncomingMessage, baseDomain: string): boolean {
  if (req.method !== "GET" && req.method !== "HEAD") return false;
  const path = (req.url ?? "").split("?")[0];
  return path === "/metrics" && !subdomainOf(req.headers.host, baseDomain).ok;
}

/** Answers with the process's metrics and `registry`'s. */
export async function sendMetrics(res: ServerResponse, registry: Registry): Promise<void> {
  const merged = metricsFor([registry]);
  const text = await merged.metrics();
  res.writeHead(200, { "content-type": merged.contentType, "content-length": Buffer.byteLength(text), "cache-control": "no-store" });
  res.end(res.req.method === "HEAD" ? undefined : text);
}
