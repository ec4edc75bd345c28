/** Header rewriting for the hop between the client and the VM (RFC 9110 §7.6.1). */
import type { IncomingMessage } from "node:http";

/** Headers that describe one connection, never the message: dropped in both directions. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "trailers",
  "transfer-encoding",
  "upgrade",
]);

/** Header Traefik adds to prove a request came through it; the VM must never see it. */
export const WAKE_SECRET_HEADER = "x-hatch-wake-secret";

/**
 * Headers through which proxies tell an app the client's address, scheme, host, port or path (every
 * `X-Forwarded-*` too). With nothing trusted in front, a client that sends one is lying to the app:
 * they are all dropped, and the ones this proxy knows are set from what it saw.
 */
const FORWARDING = new Set([
  "forwarded",
  "x-real-ip",
  "x-client-ip",
  "true-client-ip",
  "client-ip",
  "cf-connecting-ip",
  "fastly-client-ip",
  "x-cluster-client-ip",
  "x-original-forwarded-for",
  "x-originating-ip",
  "x-remote-ip",
  "x-remote-addr",
  "x-proxyuser-ip",
  "x-envoy-external-address",
]);

/**
 * What `Connection` may not name: the VM must get a Host (HTTP/1.1 requires one), and a body
 * without its Content-Length would reach the VM unframed (its bytes read as a second request).
 */
const NOT_REMOVABLE = new Set(["host", "content-length"]);

function connectionTokens(value: string | undefined): Set<string> | undefined {
  if (!value) return undefined;
  // The usual values name only hop-by-hop tokens already dropped: skip building a set per request.
  const plain = value.length <= 10 ? value.toLowerCase() : "";
  if (plain === "keep-alive" || plain === "close" || plain === "upgrade") return undefined;
  const tokens = new Set<string>();
  for (const t of value.split(",")) {
    const name = t.trim().toLowerCase();
    if (name && !NOT_REMOVABLE.has(name)) tokens.add(name);
  }
  return tokens;
}

export interface RequestHeaderOptions {
  /** Trust X-Forwarded-Proto/Host set by the proxy in front (sidecar behind Traefik); else replace them. */
  trustForwarded: boolean;
  /** Keep `Connection: upgrade` and `Upgrade` (WebSocket handshakes). */
  upgrade?: boolean;
}

/**
 * The raw header list to send to the VM: hop-by-hop headers, headers named in `Connection` (never
 * Host or Content-Length), the wake secret and `Expect` (this proxy already answered it) removed;
 * X-Forwarded-For appended with the peer address and X-Forwarded-Proto/Host set unless trusted from
 * upstream; untrusted, every other forwarding header dropped and X-Real-IP/X-Forwarded-Port set.
 */
export function upstreamRequestHeaders(req: IncomingMessage, opts: RequestHeaderOptions): string[] {
  const raw = req.rawHeaders;
  const named = connectionTokens(req.headers.connection);
  const out: string[] = [];
  let forwardedFor: string | undefined;
  let proto: string | undefined;
  let fwdHost: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === WAKE_SECRET_HEADER || lower === "expect" || named?.has(lower)) continue;
    if (lower === "x-forwarded-for") {
      if (opts.trustForwarded) forwardedFor = forwardedFor ? `${forwardedFor}, ${value}` : value;
      continue;
    }
    if (lower === "x-forwarded-proto") {
      if (opts.trustForwarded) proto ??= value;
      continue;
    }
    if (lower === "x-forwarded-host") {
      if (opts.trustForwarded) fwdHost ??= value;
      continue;
    }
    if (!opts.trustForwarded && (FORWARDING.has(lower) || lower.startsWith("x-forwarded-"))) continue;
    out.push(name, value);
  }
  const peer = clientAddress(req);
  if (peer) forwardedFor = forwardedFor ? `${forwardedFor}, ${peer}` : peer;
  if (forwardedFor) out.push("X-Forwarded-For", forwardedFor);
  out.push("X-Forwarded-Proto", proto ?? ((req.socket as { encrypted?: boolean }).encrypted ? "https" : "http"));
  const host = fwdHost ?? req.headers.host;
  if (host) out.push("X-Forwarded-Host", host);
  if (!opts.trustForwarded) {
    // What Traefik sets in front of the sidecar, from what this proxy saw itself.
    if (peer) out.push("X-Real-IP", peer);
    if (req.socket.localPort) out.push("X-Forwarded-Port", String(req.socket.localPort));
  }
  if (opts.upgrade) out.push("Connection", "Upgrade", "Upgrade", req.headers.upgrade ?? "websocket");
  return out;
}

/** The peer's IP with the IPv4-mapped prefix removed. */
export function clientAddress(req: IncomingMessage): string | undefined {
  const a = req.socket.remoteAddress;
  return a?.startsWith("::ffff:") ? a.slice(7) : a;
}

/** The VM's response headers minus hop-by-hop ones, plus `extra` (already a flat raw list). */
export function downstreamResponseHeaders(raw: string[], extra: readonly string[] | undefined): string[] {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 10 && raw[i]!.toLowerCase() === "connection") named = connectionTokens(raw[i + 1]);
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || named?.has(lower)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  if (extra) for (const h of extra) out.push(h);
  return out;
}
