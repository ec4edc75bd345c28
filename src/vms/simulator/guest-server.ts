/**
 * The "workload" inside a simulated VM: one HTTP server per guest port, bound to the VM's own
 * loopback address, answering with a description of each request so tests can see exactly what
 * reached the guest (and on which boot).
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Server as NetServer, Socket } from "node:net";
import { WebSocketServer } from "ws";

export interface GuestIdentity {
  vmId: string;
  ip: string;
  /** The VM's boot counter at the moment these servers opened. */
  boot: number;
}

/** The listeners of one running VM; `close()` makes every port refuse connections again. */
export interface GuestServers {
  close(): Promise<void>;
}

const MAX_STREAM_CHUNKS = 1000;
const MAX_EVENTS = 1_000_000;
const MAX_DELAY_MS = 600_000;
/** Distinct `rid` values counted per VM; see GuestTraffic.countRequest for what happens beyond. */
export const MAX_COUNTED_RIDS = 100_000;
/** Longer `rid` values are not counted: 100,000 of them must stay a few megabytes at most. */
export const MAX_RID_LENGTH = 256;

/**
 * What the guest servers of one VM received, across all its ports and boots. The VM's entry in
 * the core owns it (not the servers, which are rebuilt on every wake), so counts survive
 * snapshot/restore: a zero-loss test can send requests around a sleep and compare per `rid`.
 */
export class GuestTraffic {
  private readonly rids = new Map<string, number>();
  private readonly live = new Set<Socket>();
  private closedRx = 0;
  private closedTx = 0;

  constructor(private readonly maxRids = MAX_COUNTED_RIDS) {}

  /**
   * Counts a request whose head arrived, keyed by its `rid` query parameter (the first one; an
   * empty value counts under ""). Requests without `rid` or with a `rid` over MAX_RID_LENGTH are not
   * counted. Once `maxRids` distinct values are held, new values are refused while the known ones
   * keep counting: a count, once reported, is never silently evicted, so a bounded table can
   * only show a rid as missing, never make an old rid look as if it lost requests.
   */
  countRequest(url: URL): void {
    const rid = url.searchParams.get("rid");
    if (rid === null || rid.length > MAX_RID_LENGTH) return;
    const n = this.rids.get(rid);
    if (n !== undefined) this.rids.set(rid, n + 1);
    else if (this.rids.size < this.maxRids) this.rids.set(rid, 1);
  }

  /** The counts per `rid` as a plain object (a fresh copy). */
  requestCounts(): Record<string, number> {
    return Object.fromEntries(this.rids);
  }

  /** Forgets every count. */
  resetRequestCounts(): void {
    this.rids.clear();
  }

  /** Follows a guest socket's byte counters until it closes, then keeps its totals. */
  track(socket: Socket): void {
    this.live.add(socket);
    socket.once("close", () => {
      this.live.delete(socket);
      this.closedRx += socket.bytesRead;
      this.closedTx += socket.bytesWritten;
    });
  }

  /** TCP payload bytes the guest received and sent, open connections included. */
  bytes(): { rx: number; tx: number } {
    let rx = this.closedRx;
    let tx = this.closedTx;
    for (const s of this.live) {
      rx += s.bytesRead;
      tx += s.bytesWritten;
    }
    return { rx, tx };
  }
}

/**
 * Opens one server per port on `ip`; all or nothing (a failed bind closes the ones already open).
 * Every request and connection is recorded in `traffic`. With `listening` (port → a server already
 * listening, e.g. inside the VM's own network namespace), each port is served on that instead.
 */
export async function openGuestServers(id: GuestIdentity, ports: readonly number[], traffic: GuestTraffic, listening?: ReadonlyMap<number, NetServer>): Promise<GuestServers> {
  const opened: GuestServer[] = [];
  try {
    for (const port of ports) opened.push(await openGuestServer(id, port, traffic, listening?.get(port)));
  } catch (err) {
    await Promise.all(opened.map((s) => s.close()));
    throw err;
  }
  return { close: async () => void (await Promise.all(opened.map((s) => s.close()))) };
}

interface GuestServer {
  close(): Promise<void>;
}

async function openGuestServer(id: GuestIdentity, port: number, traffic: GuestTraffic, listening: NetServer | undefined): Promise<GuestServer> {
  // Every socket is tracked, upgraded WebSockets included, because a sleeping VM must drop
  // established connections too, not only stop accepting new ones.
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const wss = new WebSocketServer({ noServer: true });
  // Requests are counted as soon as their head is parsed, before any body or answer, so a request
  // cut by a sleep mid-answer still shows as received.
  const server: Server = createServer((req, res) => {
    const url = requestUrl(req);
    traffic.countRequest(url);
    handle(id, port, url, req, res, timers);
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    traffic.track(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const url = requestUrl(req);
    traffic.countRequest(url);
    if (url.pathname !== "/ws") {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const ready = () => {
      server.off("error", reject);
      resolve();
    };
    if (listening) server.listen(listening, ready);
    else server.listen({ host: id.ip, port, exclusive: true }, ready);
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const t of timers) clearTimeout(t);
        timers.clear();
        server.close(() => resolve());
        for (const client of wss.clients) client.terminate();
        for (const s of sockets) s.destroy();
        wss.close();
      }),
  };
}

/** The request's URL; an unparsable target (possible in absolute form) reads as "/" instead of throwing in a listener. */
function requestUrl(req: IncomingMessage): URL {
  try {
    return new URL(req.url ?? "/", "http://guest");
  } catch {
    return new URL("/", "http://guest");
  }
}

function handle(id: GuestIdentity, port: number, url: URL, req: IncomingMessage, res: ServerResponse, timers: Set<NodeJS.Timeout>) {
  const hash = createHash("sha256");
  let length = 0;
  req.on("data", (chunk: Buffer) => {
    length += chunk.length;
    hash.update(chunk);
  });
  req.on("error", () => res.destroy());
  req.on("end", () => {
    const describe = {
      vm_id: id.vmId,
      port,
      boot: id.boot,
      method: req.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body_length: length,
      body_sha256: hash.digest("hex"),
    };
    // One pending timer per response and one close listener for all of them: a long stream
    // must not add a listener per chunk.
    let pending: NodeJS.Timeout | undefined;
    const later = (ms: number, fn: () => void) => {
      if (pending === undefined) {
        res.once("close", () => {
          clearTimeout(pending);
          timers.delete(pending!);
        });
      }
      const t = setTimeout(() => {
        timers.delete(t);
        fn();
      }, ms);
      pending = t;
      timers.add(t);
    };

    if (url.pathname === "/ws") return sendJson(res, 426, { error: "websocket upgrade required", ...describe });
    if (url.pathname === "/sleep") {
      const ms = intParam(url, "ms", 0, 0, MAX_DELAY_MS);
      return later(ms, () => sendJson(res, 200, describe));
    }
    const status = /^\/status\/(\d{3})$/.exec(url.pathname);
    if (status) {
      const code = Number(status[1]);
      if (code < 200 || code > 599) return sendJson(res, 400, { error: "status must be between 200 and 599" });
      return sendJson(res, code, describe);
    }
    if (url.pathname === "/stream") {
      const n = intParam(url, "n", 5, 1, MAX_STREAM_CHUNKS);
      const ms = intParam(url, "ms", 100, 0, MAX_DELAY_MS);
      res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
      res.flushHeaders();
      let i = 0;
      const next = () => {
        res.write(JSON.stringify({ chunk: i, of: n, vm_id: id.vmId, boot: id.boot, at: Date.now() }) + "\n");
        i += 1;
        if (i >= n) res.end();
        else later(ms, next);
      };
      return next();
    }
    if (url.pathname === "/events") return serveEvents(id, url, res, later);
    sendJson(res, 200, describe);
  });
}

/**
 * `/events?ms=&n=`: server-sent events, one `tick` at once and then one every `ms` (default 1000);
 * with `n`, the stream ends after n events; without it, it lasts until the client leaves or the VM
 * sleeps. `ms=0` without `n` is an idle stream: the head and nothing more.
 */
function serveEvents(id: GuestIdentity, url: URL, res: ServerResponse, later: (ms: number, fn: () => void) => void) {
  const ms = intParam(url, "ms", 1000, 0, MAX_DELAY_MS);
  // A non-numeric `n` reads as absent, like every other parameter here that does not parse.
  const n = /^\d+$/.test(url.searchParams.get("n") ?? "") ? intParam(url, "n", 0, 0, MAX_EVENTS) : undefined;
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store" });
  res.flushHeaders();
  if (n === 0) return void res.end();
  if (n === undefined && ms === 0) return;
  let i = 0;
  const next = () => {
    const more = res.write(`event: tick\ndata: ${JSON.stringify({ i, vm_id: id.vmId, boot: id.boot })}\n\n`);
    i += 1;
    if (n !== undefined && i >= n) return void res.end();
    // A client that stops reading gets no more ticks queued in memory until it catches up.
    if (more) later(ms, next);
    else res.once("drain", () => later(ms, next));
  };
  next();
}

function intParam(url: URL, name: string, dflt: number, min: number, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null || !/^\d+$/.test(raw)) return dflt;
  return Math.min(max, Math.max(min, Number(raw)));
}

function sendJson(res: ServerResponse, status: number, body: unknown) {
  if (status === 204 || status === 304) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}
