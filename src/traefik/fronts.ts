/**
 * The Traefik instances in front (HATCH_TRAEFIK_API_URLS), read through their API entry point:
 * Prometheus request counters per service tell which routes served requests on the direct path
 * (counted when a request ends), and the API tells whether an instance has applied a config
 * without a VM's routers. Nothing here is on any request's path.
 */
import type { Logger } from "../log.ts";

/** Requests ended per service, from `traefik_service_requests_total`. */
export type ServiceCounts = Map<string, number>;

const SERVICE_COUNTER = "traefik_service_requests_total";

/**
 * Sums `traefik_service_requests_total` by its `service` label, with the provider suffix removed
 * (`rt_abc@http` → `rt_abc`); services of other providers keep their suffix.
 */
export function parseServiceCounts(text: string): ServiceCounts {
  const out: ServiceCounts = new Map();
  let at = 0;
  for (;;) {
    at = text.indexOf(SERVICE_COUNTER + "{", at);
    if (at === -1) break;
    // Only at the start of a line (not inside a # HELP text or another metric's name).
    if (at > 0 && text.charCodeAt(at - 1) !== 10) {
      at += SERVICE_COUNTER.length;
      continue;
    }
    const end = text.indexOf("\n", at);
    const line = text.slice(at, end === -1 ? undefined : end);
    at = end === -1 ? text.length : end;
    const close = line.lastIndexOf("}");
    const m = /(?:^|[{,])service="((?:[^"\\]|\\.)*)"/.exec(line.slice(SERVICE_COUNTER.length, close + 1));
    if (!m || close === -1) continue;
    const value = Number(line.slice(close + 1).trim().split(/\s+/)[0]);
    if (!Number.isFinite(value)) continue;
    const name = m[1]!.replace(/\\(.)/g, "$1").replace(/@http$/, "");
    out.set(name, (out.get(name) ?? 0) + value);
  }
  return out;
}

export interface ScrapeResult {
  /** Services whose counter moved since this process last read the same instance. */
  changed: Set<string>;
  /** Instances that could not be read (URL). */
  failed: string[];
}

export interface RoutersCheck {
  /** Every readable instance has none of the routers, and every instance was readable. */
  absent: boolean;
  unreadable: string[];
  /** `<instance> <router>` pairs still present. */
  present: string[];
}

export interface TraefikFrontsOptions {
  urls: readonly string[];
  /** Timeout of one metrics or API call. */
  timeoutMs: number;
  log: Logger;
  fetch?: typeof fetch;
}

interface InstanceState {
  url: string;
  /** Counters at the last successful read; undefined before the first (a baseline, not activity). */
  last: ServiceCounts | undefined;
  failing: boolean;
  /** Failed reads in a row, and whether it ever answered (a Traefik still starting is not news). */
  failures: number;
  answered: boolean;
}

/** The configured Traefik instances; an empty list means nothing routes around the sidecar. */
export class TraefikFronts {
  private instances: InstanceState[];
  private readonly doFetch: typeof fetch;
  /** When a scrape last saw each service's counter move (Date.now()). */
  private readonly lastChange = new Map<string, number>();
  private scraping: Promise<ScrapeResult> | undefined;

  constructor(private readonly opts: TraefikFrontsOptions) {
    this.instances = [];
    this.setUrls(opts.urls);
    this.doFetch = opts.fetch ?? fetch;
  }

  /** Replaces the instances (the Traefik `npm start` runs failed, say, and nothing routes around the sidecar). */
  setUrls(urls: readonly string[]): void {
    this.instances = urls.map((url) => ({ url: url.replace(/\/+$/, ""), last: undefined, failing: false, failures: 0, answered: false }));
  }

  /** True when at least one instance is configured. */
  get configured(): boolean {
    return this.instances.length > 0;
  }

  get urls(): string[] {
    return this.instances.map((i) => i.url);
  }

  /** When a counter of `service` was last seen moving (undefined: never, by this process). */
  lastChangeOf(service: string): number | undefined {
    return this.lastChange.get(service);
  }

  /** Reads every instance's counters once; concurrent callers share one read. */
  scrape(): Promise<ScrapeResult> {
    this.scraping ??= this.scrapeAll().finally(() => (this.scraping = undefined));
    return this.scraping;
  }

  private async scrapeAll(): Promise<ScrapeResult> {
    const changed = new Set<string>();
    const failed: string[] = [];
    await Promise.all(
      this.instances.map(async (inst) => {
        let counts: ServiceCounts;
        try {
          const res = await this.doFetch(`${inst.url}/metrics`, { signal: AbortSignal.timeout(this.opts.timeoutMs) });
          if (res.status !== 200) throw new Error(`metrics answered ${res.status}`);
          counts = parseServiceCounts(await res.text());
        } catch (err) {
          failed.push(inst.url);
          inst.failures += 1;
          if (!inst.failing && (inst.answered || inst.failures >= 5)) {
            this.opts.log.warn("traefik metrics unreadable: its routes count as active until it answers", { traefik: inst.url, err });
            inst.failing = true;
          }
          // Counters after an outage may have restarted: the next read is a new baseline.
          inst.last = undefined;
          return;
        }
        if (inst.failing) this.opts.log.info("traefik metrics readable again", { traefik: inst.url });
        inst.failing = false;
        inst.failures = 0;
        inst.answered = true;
        const before = inst.last;
        inst.last = counts;
        if (!before) return;
        const now = Date.now();
        for (const [service, n] of counts) {
          // A series that appeared, or moved either way (a restarted Traefik counts from zero).
          if (before.get(service) !== n) {
            changed.add(service);
            this.lastChange.set(service, now);
          }
        }
      }),
    );
    return { changed, failed };
  }

  /** Asks every instance's API whether each router (`name`, provider http) is still loaded. */
  async routersAbsent(names: readonly string[]): Promise<RoutersCheck> {
    const unreadable: string[] = [];
    const present: string[] = [];
    await Promise.all(
      this.instances.map(async (inst) => {
        for (const name of names) {
          let status: number;
          try {
            const res = await this.doFetch(`${inst.url}/api/http/routers/${encodeURIComponent(name)}@http`, { signal: AbortSignal.timeout(this.opts.timeoutMs) });
            status = res.status;
            await res.body?.cancel().catch(() => {});
          } catch {
            status = 0;
          }
          if (status === 404) continue;
          if (status === 200) present.push(`${inst.url} ${name}`);
          else {
            unreadable.push(inst.url);
            return;
          }
        }
      }),
    );
    return { absent: unreadable.length === 0 && present.length === 0, unreadable, present };
  }
}
