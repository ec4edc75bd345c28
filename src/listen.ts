import type { Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { createAdaptorServer } from "@hono/node-server";
import type { Duplex } from "node:stream";
import { addrToUrl, type ListenAddr } from "./config.ts";

/** A listening server and how to stop it. */
export interface Listening {
  /** A URL a client on this machine can dial (wildcard binds map to loopback). */
  url: string;
  port: number;
  /**
   * Stops accepting, ends idle keep-alive connections and upgraded ones (WebSockets) at once, and
   * cuts whatever is still running after the grace period: it always resolves within the grace.
   */
  close(): Promise<void>;
}

/** Grace for requests in flight at close, unless the caller says otherwise. A shutdown has 5 s in all. */
export const DEFAULT_GRACE_MS = 2000;

/** Listens on `addr` (port 0: any free port); resolves once bound, rejects on EADDRINUSE and the like. */
export async function listen(server: Server, addr: ListenAddr, opts: { graceMs?: number; backlog?: number } = {}): Promise<Listening> {
  // server.close() waits for every connection, upgraded ones too, which may stay open for hours and
  // which closeAllConnections() does not see: keep our own list to end them.
  const sockets = new Set<Socket>();
  const upgraded = new Set<Duplex>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  // Only where someone handles upgrades: a listener of our own would make the server accept them.
  if (server.listenerCount("upgrade") > 0) server.on("upgrade", (_req, socket: Duplex) => upgraded.add(socket));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: addr.host, port: addr.port, backlog: opts.backlog }, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
  const cutAll = () => {
    server.closeAllConnections();
    for (const s of sockets) s.destroy();
  };
  return {
    url: addrToUrl({ host: addr.host, port }),
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        for (const s of upgraded) s.destroy();
        if (graceMs <= 0) cutAll();
        else setTimeout(cutAll, graceMs).unref();
      }),
  };
}

/** Serves a fetch-style handler (Hono) on node:http; resolves once listening. */
export function listenHono(fetch: (req: Request, env?: any) => Response | Promise<Response>, addr: ListenAddr): Promise<Listening> {
  return listen(createAdaptorServer({ fetch }) as Server, addr);
}
