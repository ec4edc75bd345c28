/** autocannon in its own process, so it never shares an event loop with what it measures. */
import { execFile, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export interface Cannon {
  rps: number;
  p50: number;
  p99: number;
  /** Errors, non-2xx answers and timeouts. */
  errors: number;
  total: number;
}

const BIN = join(fileURLToPath(new URL("..", import.meta.url)), "node_modules/autocannon/autocannon.js");

export interface CannonOptions {
  connections: number;
  seconds: number;
  /** The Host header to send (routing by subdomain). */
  host?: string | undefined;
  /** A POST body (application/octet-stream); GET without it. */
  post?: string | undefined;
  /** Told about the child process (a bench that kills its children on exit tracks it). */
  onChild?: (child: ChildProcess) => void;
}

/** Runs autocannon against `url` and resolves with its summary. */
export function autocannon(url: string, o: CannonOptions): Promise<Cannon> {
  const args = [BIN, "-c", String(o.connections), "-d", String(o.seconds), "--json"];
  if (o.host) args.push("-H", `host=${o.host}`);
  if (o.post !== undefined) args.push("-m", "POST", "-H", "content-type=application/octet-stream", "-b", o.post);
  args.push(url);
  return new Promise((resolve, reject) => {
    const child = execFile(process.execPath, args, { maxBuffer: 64 << 20, timeout: (o.seconds + 30) * 1000 }, (err, stdout) => {
      if (err) return reject(err);
      const r = JSON.parse(stdout);
      resolve({ rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors + r.non2xx + (r.timeouts ?? 0), total: r.requests.total });
    });
    o.onChild?.(child);
  });
}
