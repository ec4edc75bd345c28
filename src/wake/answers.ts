/**
 * The answers a proxy writes itself, not the VM: JSON failures, refusals while an upload goes on,
 * the 307 back to the same URL for Traefik's sleep fallback, the waking page, and failures on a raw
 * socket (upgrades). Each is counted in the proxy's request metrics.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Failure } from "../lifecycle/failure.ts";
import type { WakeMetrics } from "../lifecycle/metrics.ts";
import { WAKING_PAGE_HEADERS, wakingPage } from "./page.ts";
import { coldHeaders, failureBody } from "./proxy-context.ts";

/** A refused upload is read and discarded until the client is quiet this long... */
const DISCARD_IDLE_MS = 2000;
/** ...or for this long in all. */
const DISCARD_MAX_MS = 30_000;

export class WakeAnswers {
  constructor(private readonly metrics: WakeMetrics) {}

  /** A JSON failure; a response already under way is cut instead. */
  failure(res: ServerResponse, f: Failure): void {
    this.metrics.request(f.status);
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    const text = failureBody(f);
    res.writeHead(f.status, { ...f.headers, "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  }

  /**
   * A refusal (413, or 503 when the process holds too many bodies) while the client may still be
   * uploading: the answer goes out at once, the rest of the body is read and discarded, and only
   * then is the connection closed, so the client's kernel does not reset it and lose the answer.
   * The discard ends when the client goes quiet for DISCARD_IDLE_MS (a slow uploader that keeps
   * sending is not cut) or after DISCARD_MAX_MS in all (one that drips forever is).
   */
  tooLarge(req: IncomingMessage, res: ServerResponse, f: Failure): void {
    this.metrics.request(f.status);
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const text = failureBody(f);
    res.writeHead(f.status, { ...f.headers, "content-type": "application/json", "content-length": Buffer.byteLength(text), connection: "close" });
    res.write(text);
    const end = () => {
      clearTimeout(idle);
      clearTimeout(cap);
      req.off("data", onData);
      res.end();
    };
    const idle = setTimeout(end, DISCARD_IDLE_MS).unref();
    const cap = setTimeout(end, DISCARD_MAX_MS).unref();
    const onData = () => idle.refresh();
    if (req.readableEnded) return end();
    req.on("data", onData);
    req.once("end", end);
    req.once("close", end);
    req.resume();
  }

  /**
   * The answer to Traefik's sleep fallback once the VM is awake: back to the same URL. Traefik
   * sends it as a 307 (FALLBACK_REWRITE), so the client repeats the GET, which now reaches the VM
   * on its direct router and gets the app's own answer. The sidecar does not run the GET itself:
   * the app sees it once.
   */
  retry(res: ServerResponse, path: string, waitStart?: number): void {
    this.metrics.request(307);
    const text = JSON.stringify({ status: "awake", retry: path });
    res.writeHead(307, {
      ...(waitStart === undefined ? {} : coldHeaders(waitStart)),
      location: path,
      "cache-control": "no-store",
      "content-type": "application/json",
      "content-length": Buffer.byteLength(text),
    });
    res.end(text);
  }

  /** The waking page, with how long this VM's wake has run and its usual wake time. */
  page(res: ServerResponse, subdomain: string, progress: { elapsedMs: number; recentMs: readonly number[] }): void {
    this.metrics.request(503);
    const html = wakingPage(subdomain, progress);
    res.writeHead(503, { ...WAKING_PAGE_HEADERS, "content-length": Buffer.byteLength(html) });
    res.end(html);
  }

  /** A failure on a raw socket (an upgrade request has no ServerResponse). */
  raw(socket: Duplex, f: Failure, extra?: string[]): void {
    this.metrics.request(f.status);
    if (socket.destroyed) return;
    socket.end(rawFailureText(f, STATUS_CODES[f.status] ?? "", extra));
  }
}

/** A failure answer as raw HTTP/1.1 text, with `extra` headers (name, value, name, value…). */
export function rawFailureText(f: Failure, statusText: string, extra?: string[]): string {
  const text = failureBody(f);
  const lines = [`HTTP/1.1 ${f.status} ${statusText}`, "Content-Type: application/json", `Content-Length: ${Buffer.byteLength(text)}`, "Connection: close"];
  for (const [k, v] of Object.entries(f.headers ?? {})) lines.push(`${k}: ${v}`);
  if (extra) for (let i = 0; i < extra.length; i += 2) lines.push(`${extra[i]}: ${extra[i + 1]}`);
  return lines.join("\r\n") + "\r\n\r\n" + text;
}
