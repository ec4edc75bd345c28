/**
 * A continuous load of GETs and POSTs with unique `rid`s, as a test client: each request on its own
 * connection, 307s followed (as browsers and fetch do), every answer checked against what was sent.
 */
import { randomBytes } from "node:crypto";
import { request } from "node:http";
import { sha256 } from "./wake-fixture.ts";

export interface LoadFailure {
  rid: string;
  method: string;
  status: number | "error";
  detail: string;
  at: number;
}

export interface LoadReport {
  /** rid → method of every request started. */
  sent: Map<string, "GET" | "POST">;
  ok: number;
  redirects: number;
  failures: LoadFailure[];
  /** Milliseconds from sending each answered GET to its final answer (redirects followed). */
  getMs: number[];
}

export interface Load {
  stop(): Promise<LoadReport>;
  readonly report: LoadReport;
}

/** Starts `workers` loops against `port` with Host `host`, alternating GET and POST (1–16 KiB bodies). */
export function startLoad(port: number, host: string, opts: { workers?: number; prefix?: string; pauseMs?: number } = {}): Load {
  const report: LoadReport = { sent: new Map(), ok: 0, redirects: 0, failures: [], getMs: [] };
  let seq = 0;
  let stopped = false;
  const prefix = opts.prefix ?? "r";

  const send = (rid: string, method: "GET" | "POST", path: string, body: Buffer | undefined, hops: number): Promise<void> =>
    new Promise((resolve) => {
      const headers: Record<string, string | number> = { host };
      if (body) headers["content-length"] = body.length;
      const req = request({ host: "127.0.0.1", port, path, method, headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", () => {
          report.failures.push({ rid, method, status: "error", detail: "response cut", at: Date.now() });
          resolve();
        });
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          if (res.statusCode === 307 && res.headers.location && hops < 5) {
            report.redirects += 1;
            return resolve(send(rid, method, res.headers.location, body, hops + 1));
          }
          if (res.statusCode !== 200) {
            report.failures.push({ rid, method, status: res.statusCode ?? 0, detail: text.slice(0, 200), at: Date.now() });
            return resolve();
          }
          let echo: { body_sha256?: string; query?: { rid?: string }; method?: string };
          try {
            echo = JSON.parse(text);
          } catch {
            echo = {};
          }
          if (echo.query?.rid !== rid || echo.method !== method || echo.body_sha256 !== sha256(body ?? Buffer.alloc(0))) {
            report.failures.push({ rid, method, status: 200, detail: `answer does not match the request: ${text.slice(0, 200)}`, at: Date.now() });
          } else report.ok += 1;
          resolve();
        });
      });
      req.on("error", (err) => {
        report.failures.push({ rid, method, status: "error", detail: err.message, at: Date.now() });
        resolve();
      });
      req.end(body);
    });

  const worker = async () => {
    while (!stopped) {
      seq += 1;
      const rid = `${prefix}${seq}`;
      const method = seq % 2 === 0 ? "POST" : "GET";
      const body = method === "POST" ? randomBytes(1024 + ((seq * 7919) % (15 * 1024))) : undefined;
      report.sent.set(rid, method);
      const started = performance.now();
      await send(rid, method, `/load?rid=${rid}`, body, 0);
      if (method === "GET") report.getMs.push(performance.now() - started);
      if (opts.pauseMs) await new Promise((r) => setTimeout(r, opts.pauseMs));
    }
  };
  const loops = Array.from({ length: opts.workers ?? 4 }, worker);
  return {
    report,
    async stop() {
      stopped = true;
      await Promise.all(loops);
      return report;
    },
  };
}

/** The `p`-th percentile (0–100) of `values`, in the values' unit; 0 for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** rids whose count at the guest is not exactly 1 (missing, or run more than once). */
export function notOnce(sent: Map<string, unknown>, counts: Record<string, number>): { rid: string; count: number }[] {
  const out: { rid: string; count: number }[] = [];
  for (const rid of sent.keys()) if (counts[rid] !== 1) out.push({ rid, count: counts[rid] ?? 0 });
  for (const [rid, n] of Object.entries(counts)) if (!sent.has(rid)) out.push({ rid, count: n });
  return out;
}
