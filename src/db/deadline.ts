/**
 * Deadlines for Postgres work. The server's statement_timeout bounds a slow statement, but not a
 * connection whose TCP path has gone silent (a black hole): no cancel and no error ever comes
 * back, and the kernel gives up on it only after many minutes. Two guards close that gap: every
 * call has a client-side deadline, and every socket is watched, so a connection that sent bytes and
 * hears nothing back for too long is destroyed (its queries fail, the pool dials anew).
 */
import { connect, type Socket } from "node:net";
import { DatabaseTimeoutError, databaseUnavailable } from "./errors.ts";

/** Rejects with DatabaseTimeoutError when `p` takes longer than `ms`; the late outcome is dropped. */
export function withDeadline<T>(p: Promise<T>, ms: number, what: string, onLate?: (value: T) => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let late = false;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      late = true;
      reject(new DatabaseTimeoutError(what, ms));
    }, ms);
  });
  p.then(
    (v) => late && onLate?.(v),
    () => {},
  );
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

interface DialOptions {
  host: string[];
  port: number[];
  path?: string | false;
}

/** The `socket` option for postgres.js, and a handle on the connections it dialed. */
export interface WatchedDialer {
  dial(o: DialOptions): Socket;
  /**
   * Closes every connection that is idle. Once one pooled connection turned out to be left over
   * from before a database restart, the other idle ones are too: closed, the pool dials fresh ones
   * instead of failing a request on each. Busy connections are left alone. Resolves once the pool
   * has seen them close (so a retry cannot be handed one of them).
   */
  recycleIdle(): Promise<void>;
}

/**
 * Dials as postgres.js would (hosts in turn, or a unix socket) and watches each connection. A
 * connection is stalled when bytes went out and none came back for `stallMs`; idle connections (a
 * LISTEN, a pooled one) are never touched by that. Counting bytes rather than listening to events
 * keeps working after the driver wraps the socket in TLS.
 */
export function watchedDialer(stallMs: number): WatchedDialer {
  let turn = 0;
  const watched = new Map<Socket, Watch>();
  return {
    dial(o) {
      let socket: Socket;
      if (o.path) socket = connect(o.path);
      else {
        const i = turn++ % o.host.length;
        const host = o.host[i]!;
        const port = o.port[i] ?? o.port[0]!;
        socket = connect(port, host);
        // The driver names the peer in its errors and uses the host for TLS SNI.
        Object.assign(socket, { host, port });
      }
      watched.set(socket, new Watch(socket, stallMs));
      socket.once("close", () => watched.delete(socket));
      return socket;
    },
    recycleIdle() {
      // On the next turn: a query handed to a connection in this one has had its write flushed by
      // then (the driver defers small writes to an immediate), so its connection no longer looks idle.
      return new Promise<void>((resolve) =>
        setImmediate(() => {
          const closing: Promise<unknown>[] = [];
          for (const [socket, w] of watched) {
            if (!w.idle()) continue;
            // The driver's own close handler was added after ours: it has run when the next
            // microtask does, and the connection is out of the pool's open queue.
            closing.push(new Promise((r) => socket.once("close", r)));
            socket.destroy();
          }
          const bound = setTimeout(resolve, 250);
          void Promise.all(closing).then(() => {
            clearTimeout(bound);
            resolve();
          });
        }),
      );
    },
  };
}

class Watch {
  private read = 0;
  private writtenAtRead = 0;
  private since: number | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly socket: Socket,
    private readonly stallMs: number,
  ) {
    this.timer = setInterval(() => this.tick(), Math.max(10, Math.min(250, stallMs / 4)));
    this.timer.unref();
    socket.once("close", () => clearInterval(this.timer));
    // Exact on a plain connection; under TLS the driver drops this listener and the ticks sample instead.
    socket.on("data", () => this.answered());
  }

  private answered(): void {
    this.read = this.socket.bytesRead;
    this.writtenAtRead = this.socket.bytesWritten;
    this.since = undefined;
  }

  /** Every byte sent has been answered, as far as this watch has seen. */
  idle(): boolean {
    const s = this.socket;
    return !s.connecting && !s.destroyed && this.read > 0 && s.bytesRead === this.read && s.bytesWritten === this.writtenAtRead;
  }

  private tick(): void {
    const s = this.socket;
    // Establishing the connection is connect_timeout's job.
    if (s.destroyed || s.connecting) return;
    const r = s.bytesRead;
    const w = s.bytesWritten;
    if (r > this.read) return this.answered();
    if (w <= this.writtenAtRead) return;
    this.since ??= Date.now();
    if (Date.now() - this.since < this.stallMs) return;
    clearInterval(this.timer);
    s.destroy(new DatabaseTimeoutError("the database connection", this.stallMs));
  }
}

/** A statement that only reads (sending it twice changes nothing). */
export function isReadOnly(query: string): boolean {
  return /^\s*(select|with)\b/i.test(query) && !/\b(insert|update|delete|merge|pg_advisory\w*|pg_notify|nextval|setval|set_config)\b/i.test(query);
}

/**
 * Runs `run` under the deadline. A failure of the connection itself (not a timeout: that would only
 * double the wait) makes the other idle connections suspect (`onStale`), and a read is then sent
 * once more: what a pool left over from before a database restart needs. A write is never resent:
 * it may have run.
 */
export async function guardedQuery<T>(run: () => Promise<T>, query: string, deadlineMs: number, onStale?: () => Promise<void>): Promise<T> {
  try {
    return await withDeadline(run(), deadlineMs, "the database query");
  } catch (err) {
    if (!databaseUnavailable(err)?.connection) throw err;
    const recycled = onStale?.();
    if (!isReadOnly(query)) throw err;
    await recycled;
    return withDeadline(run(), deadlineMs, "the database query");
  }
}
