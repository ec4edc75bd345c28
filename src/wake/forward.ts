/** Streams one request to a VM and its answer back, reporting failures the caller may act on. */
import { request, STATUS_CODES, type Agent, type ClientRequest, type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Socket } from "node:net";
import { hasNoBody } from "./body.ts";
import { downstreamResponseHeaders } from "./headers.ts";

export interface Target {
  host: string;
  port: number;
}

export type ForwardResult =
  /** The VM's response head reached the client; its body streams on. */
  | { ok: true; status: number }
  /** The connection was refused: no byte reached the VM and a live request body is still unread. */
  | { ok: false; reason: "refused" }
  /** No route to the guest (its link is gone: a sleeping VM on Hatch's bridge), before anything was sent. */
  | { ok: false; reason: "unreachable"; code: string }
  /** The connection dropped before any response; `reused` = on a kept-alive socket (the VM may have closed it). */
  | { ok: false; reason: "reset"; reused: boolean }
  | { ok: false; reason: "timeout"; phase: "connect" | "response" }
  /**
   * Sent to a VM that, asked after `staleAfterMs` without an answer, no longer
   * takes connections: Hatch froze it (a VM paused for a snapshot drops packets; its connections
   * hang without a FIN or a reset). `sent` = the request's body (if any) had left.
   */
  | { ok: false; reason: "stale"; sent: boolean }
  | { ok: false; reason: "client-gone" }
  | { ok: false; reason: "error"; error: Error };

export interface ForwardOptions {
  agent: Agent;
  /** Headers for the VM (see upstreamRequestHeaders). */
  headers: string[];
  /** A buffered body to replay instead of streaming the live request. */
  body?: Buffer | undefined;
  /** Added to the response (Server-Timing after a wake), as a flat raw list. */
  extraResponseHeaders?: readonly string[] | undefined;
  connectTimeoutMs: number;
  /** Longest wait for the response head once connected (then 504). */
  responseTimeoutMs: number;
  /**
   * With no response head after `staleAfterMs`, `alive()` is asked (a fresh
   * connect to the VM, say); false ends the attempt as `stale` instead of waiting out the response
   * timeout on a connection the VM will never answer.
   */
  stale?: { afterMs: number; alive(): Promise<boolean> } | undefined;
}

class ForwardStale extends Error {
  constructor() {
    super("upstream connection went silent: the vm no longer takes connections");
  }
}

class ForwardTimeout extends Error {
  constructor(readonly phase: "connect" | "response") {
    super(`upstream ${phase} timeout`);
  }
}

/** The origin-form path of a request (absolute-form request targets are reduced to path + query). */
export function requestPath(url: string | undefined): string {
  if (!url) return "/";
  if (url.startsWith("/")) return url;
  try {
    const u = new URL(url);
    return u.pathname + u.search;
  } catch {
    return "/";
  }
}

function withBodyFraming(headers: string[], req: IncomingMessage, body: Buffer | undefined): string[] {
  if (body) {
    const out: string[] = [];
    for (let i = 0; i < headers.length; i += 2) if (headers[i]!.toLowerCase() !== "content-length") out.push(headers[i]!, headers[i + 1]!);
    if (body.length > 0 || req.headers["content-length"] !== undefined) out.push("Content-Length", String(body.length));
    return out;
  }
  // Transfer-Encoding is hop-by-hop and was dropped; a streamed chunked body needs it back for this hop.
  if (req.headers["transfer-encoding"] !== undefined) return [...headers, "Transfer-Encoding", "chunked"];
  return headers;
}

/** Connect errors that mean the guest cannot be reached at all (no ARP answer, no route). */
const UNREACHABLE = new Set(["EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "ETIMEDOUT"]);

/**
 * Sends `req` to `target` and relays the response into `res`. The live request body is only read
 * once the TCP connection is up, so a refused connection leaves it intact for a wake and replay.
 * Resolves when the response head was relayed or the attempt failed before anything was relayed.
 */
export function forwardRequest(req: IncomingMessage, res: ServerResponse, target: Target, opts: ForwardOptions): Promise<ForwardResult> {
  // Nothing is sent for a client that has already left (a replay after it gave up, say).
  if (res.destroyed) return Promise.resolve({ ok: false, reason: "client-gone" });
  return new Promise((resolve) => {
    let settled = false;
    let connected = false;
    let timer: NodeJS.Timeout | undefined;
    const up: ClientRequest = request({
      host: target.host,
      port: target.port,
      method: req.method,
      path: requestPath(req.url),
      headers: withBodyFraming(opts.headers, req, opts.body) as unknown as Record<string, string>,
      agent: opts.agent,
      setHost: false,
    });
    const finish = (r: ForwardResult) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      resolve(r);
    };
    const onClientClose = () => {
      if (res.writableFinished) return;
      up.destroy();
      finish({ ok: false, reason: "client-gone" });
    };
    res.once("close", onClientClose);

    let staleTimer: NodeJS.Timeout | undefined;
    const onConnected = () => {
      connected = true;
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => up.destroy(new ForwardTimeout("response")), opts.responseTimeoutMs);
      const stale = opts.stale;
      if (stale) {
        staleTimer = setTimeout(() => {
          void stale.alive().then((ok) => {
            if (!ok && !settled) up.destroy(new ForwardStale());
          });
        }, stale.afterMs);
        up.once("response", () => clearTimeout(staleTimer));
        up.once("close", () => clearTimeout(staleTimer));
      }
      if (opts.body) up.end(opts.body);
      else if (hasNoBody(req)) up.end();
      else {
        req.pipe(up);
        req.once("error", () => up.destroy());
      }
    };
    up.once("socket", (socket: Socket) => {
      if (socket.connecting) {
        timer = setTimeout(() => up.destroy(new ForwardTimeout("connect")), opts.connectTimeoutMs);
        socket.once("connect", onConnected);
      } else onConnected();
    });

    up.on("error", (err: NodeJS.ErrnoException) => {
      if (settled) {
        // The response is already streaming: the client's copy is cut short too.
        res.destroy();
        return;
      }
      if (err instanceof ForwardTimeout) finish({ ok: false, reason: "timeout", phase: err.phase });
      else if (err instanceof ForwardStale) finish({ ok: false, reason: "stale", sent: !hasNoBody(req) || opts.body !== undefined });
      else if (!connected && err.code === "ECONNREFUSED") finish({ ok: false, reason: "refused" });
      else if (!connected && UNREACHABLE.has(err.code ?? "")) finish({ ok: false, reason: "unreachable", code: err.code! });
      else if (err.code === "ECONNRESET" || err.code === "EPIPE") finish({ ok: false, reason: "reset", reused: up.reusedSocket });
      else finish({ ok: false, reason: "error", error: err });
    });

    up.once("response", (upRes: IncomingMessage) => {
      if (settled) {
        upRes.destroy();
        return;
      }
      const status = upRes.statusCode ?? 502;
      res.writeHead(status, upRes.statusMessage, downstreamResponseHeaders(upRes.rawHeaders, opts.extraResponseHeaders));
      // Streams (chunked, SSE) may be quiet for a while: let the client see the head now.
      if (upRes.headers["content-length"] === undefined && req.method !== "HEAD") res.flushHeaders();
      upRes.on("error", () => res.destroy());
      upRes.on("aborted", () => res.destroy());
      upRes.pipe(res);
      finish({ ok: true, status });
    });
  });
}

export type UpgradeResult =
  | { ok: true; status: number }
  | { ok: false; reason: "refused" }
  | { ok: false; reason: "unreachable"; code: string }
  | { ok: false; reason: "reset" }
  | { ok: false; reason: "timeout"; phase: "connect" | "response" }
  | { ok: false; reason: "client-gone" }
  | { ok: false; reason: "error"; error: Error };

/**
 * Replays an upgrade (WebSocket handshake) to `target`; on 101 both sockets are piped together,
 * otherwise the VM's plain answer is relayed and the client socket closed.
 */
export function forwardUpgrade(
  req: IncomingMessage,
  client: Duplex,
  head: Buffer,
  target: Target,
  opts: Omit<ForwardOptions, "agent" | "body">,
): Promise<UpgradeResult> {
  if (client.destroyed) return Promise.resolve({ ok: false, reason: "client-gone" });
  return new Promise((resolve) => {
    let settled = false;
    let connected = false;
    let timer: NodeJS.Timeout | undefined;
    // An upgraded connection is never returned to a pool: a dedicated socket.
    const up = request({
      host: target.host,
      port: target.port,
      method: req.method,
      path: requestPath(req.url),
      headers: opts.headers as unknown as Record<string, string>,
      agent: false,
      setHost: false,
    });
    const finish = (r: UpgradeResult) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      client.off("close", onClientClose);
      resolve(r);
    };
    const onClientClose = () => {
      up.destroy();
      finish({ ok: false, reason: "client-gone" });
    };
    client.once("close", onClientClose);
    up.once("socket", (socket: Socket) => {
      timer = setTimeout(() => up.destroy(new ForwardTimeout("connect")), opts.connectTimeoutMs);
      socket.once("connect", () => {
        connected = true;
        clearTimeout(timer);
        timer = setTimeout(() => up.destroy(new ForwardTimeout("response")), opts.responseTimeoutMs);
      });
    });
    up.on("error", (err: NodeJS.ErrnoException) => {
      if (err instanceof ForwardTimeout) finish({ ok: false, reason: "timeout", phase: err.phase });
      else if (!connected && err.code === "ECONNREFUSED") finish({ ok: false, reason: "refused" });
      else if (!connected && UNREACHABLE.has(err.code ?? "")) finish({ ok: false, reason: "unreachable", code: err.code! });
      else if (err.code === "ECONNRESET" || err.code === "EPIPE") finish({ ok: false, reason: "reset" });
      else finish({ ok: false, reason: "error", error: err });
    });
    up.once("upgrade", (upRes: IncomingMessage, upSocket: Socket, upHead: Buffer) => {
      if (settled) {
        upSocket.destroy();
        return;
      }
      const lines = [`HTTP/1.1 ${upRes.statusCode ?? 101} ${upRes.statusMessage || "Switching Protocols"}`];
      const raw = upRes.rawHeaders;
      for (let i = 0; i < raw.length; i += 2) lines.push(`${raw[i]}: ${raw[i + 1]}`);
      const extra = opts.extraResponseHeaders ?? [];
      for (let i = 0; i < extra.length; i += 2) lines.push(`${extra[i]}: ${extra[i + 1]}`);
      client.write(lines.join("\r\n") + "\r\n\r\n");
      if (upHead.length) client.write(upHead);
      if (head.length) upSocket.write(head);
      upSocket.setNoDelay(true);
      upSocket.setTimeout(0);
      const closeBoth = () => {
        client.destroy();
        upSocket.destroy();
      };
      upSocket.on("error", closeBoth);
      client.on("error", closeBoth);
      upSocket.on("close", closeBoth);
      client.on("close", closeBoth);
      upSocket.pipe(client);
      client.pipe(upSocket);
      finish({ ok: true, status: upRes.statusCode ?? 101 });
    });
    up.once("response", (upRes: IncomingMessage) => {
      // The VM declined the upgrade: relay its answer, delimited by closing the connection.
      if (settled) {
        upRes.destroy();
        return;
      }
      const status = upRes.statusCode ?? 502;
      const headers = downstreamResponseHeaders(upRes.rawHeaders, opts.extraResponseHeaders);
      const lines = [`HTTP/1.1 ${status} ${upRes.statusMessage || STATUS_CODES[status] || ""}`];
      for (let i = 0; i < headers.length; i += 2) lines.push(`${headers[i]}: ${headers[i + 1]}`);
      lines.push("Connection: close");
      client.write(lines.join("\r\n") + "\r\n\r\n");
      upRes.pipe(client);
      upRes.on("error", () => client.destroy());
      finish({ ok: true, status });
    });
    up.end();
  });
}
