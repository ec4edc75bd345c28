/** Buffers the body of a request that must wait for its VM, so it can be replayed once the VM is up. */
import type { IncomingMessage } from "node:http";
import { Gauge, type Registry } from "prom-client";
import { FailureError } from "../lifecycle/failure.ts";

/** The body is larger than the cap: answer 413 before anything is lost. */
export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body exceeds the ${limit}-byte limit`);
    this.name = "BodyTooLargeError";
  }
}

/** The client went away before sending the whole body. */
export class ClientGoneError extends Error {
  constructor() {
    super("client closed the connection");
    this.name = "ClientGoneError";
  }
}

/**
 * The bytes of request bodies one process holds in memory while their VMs wake, across all VMs and
 * both proxies: without a ceiling, a thousand held 10 MiB bodies per VM is what the per-body and
 * per-VM caps allow, unauthenticated.
 */
export class HeldBytes {
  private used = 0;

  constructor(
    readonly limit: number,
    registry?: Registry,
  ) {
    if (registry && !registry.getSingleMetric("hatch_wake_held_body_bytes")) {
      const held = this;
      new Gauge({
        name: "hatch_wake_held_body_bytes",
        help: "Request-body bytes held in memory while VMs wake (ceiling: HATCH_WAKE_MAX_BUFFERED).",
        registers: [registry],
        collect() {
          this.set(held.used);
        },
      });
    }
  }

  /** Bytes held now. */
  get inUse(): number {
    return this.used;
  }

  /** One request's share: taken as its body arrives, all given back by release() (idempotent). */
  lease(): HeldLease {
    let mine = 0;
    return {
      limit: this.limit,
      take: (n) => {
        if (this.used + n > this.limit) return false;
        this.used += n;
        mine += n;
        return true;
      },
      release: () => {
        this.used -= mine;
        mine = 0;
      },
    };
  }
}

export interface HeldLease {
  /** The process's ceiling (HATCH_WAKE_MAX_BUFFERED). */
  readonly limit: number;
  /** Takes `n` more bytes; false (nothing taken) when the process's ceiling would be passed. */
  take(n: number): boolean;
  release(): void;
}

/** The process holds as many body bytes as HATCH_WAKE_MAX_BUFFERED allows: a 503 to retry. */
export class HeldBytesFullError extends FailureError {
  constructor(limit: number) {
    super({
      status: 503,
      error: `too many request bodies held while VMs wake (HATCH_WAKE_MAX_BUFFERED=${formatBytes(limit)}): try again shortly`,
      headers: { "retry-after": "2" },
    });
    this.name = "HeldBytesFullError";
  }
}

const EMPTY = Buffer.alloc(0);

/** The declared Content-Length, or undefined when absent or not a plain number. */
export function declaredLength(req: IncomingMessage): number | undefined {
  const raw = req.headers["content-length"];
  if (raw === undefined || !/^\d+$/.test(raw)) return undefined;
  return Number(raw);
}

/** True when the request carries no body at all (no Content-Length > 0 and not chunked). */
export function hasNoBody(req: IncomingMessage): boolean {
  return req.headers["transfer-encoding"] === undefined && !(declaredLength(req)! > 0);
}

/**
 * Reads the whole request body into memory, counting as it goes (chunked bodies have no declared
 * size), and rejects with BodyTooLargeError as soon as it passes `maxBytes`. With a `lease`, every
 * chunk is also taken from the process's ceiling (rejecting with HeldBytesFullError past it); a
 * caller that took a declared length up front passes none.
 */
export function readBody(req: IncomingMessage, maxBytes: number, lease?: HeldLease): Promise<Buffer> {
  if (req.readableEnded || hasNoBody(req)) return Promise.resolve(EMPTY);
  const declared = declaredLength(req);
  if (declared !== undefined && declared > maxBytes) return Promise.reject(new BodyTooLargeError(maxBytes));
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    // A declared body is copied into one buffer of its size as it arrives: holding the chunks and
    // then concatenating them would need twice its size at the end.
    const whole = declared !== undefined && declared > 0 ? Buffer.allocUnsafe(declared) : undefined;
    let size = 0;
    const cleanup = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onGone);
      req.off("aborted", onGone);
      req.off("close", onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      const full = size <= maxBytes && lease !== undefined && !lease.take(chunk.length);
      if (size > maxBytes || full) {
        cleanup();
        // Stop reading: the rest is discarded by the server once the answer is sent.
        req.pause();
        chunks.length = 0;
        lease?.release();
        reject(full ? new HeldBytesFullError(lease.limit) : new BodyTooLargeError(maxBytes));
        return;
      }
      if (!whole) chunks.push(chunk);
      else if (size <= whole.length) chunk.copy(whole, size - chunk.length);
    };
    const onEnd = () => {
      cleanup();
      if (whole) resolve(size === whole.length ? whole : whole.subarray(0, Math.min(size, whole.length)));
      else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onGone = () => {
      cleanup();
      reject(new ClientGoneError());
    };
    const onClose = () => {
      if (!req.readableEnded) onGone();
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onGone);
    req.on("aborted", onGone);
    req.on("close", onClose);
  });
}

/** The 413 text, naming the limit in MiB/KiB when it is a round number. */
export function bodyTooLargeMessage(limit: number): string {
  return `request body exceeds ${formatBytes(limit)}, the most held while a VM wakes (HATCH_WAKE_MAX_BODY)`;
}

/** `10485760` → `10 MiB`, `65536` → `64 KiB`, else bytes. */
export function formatBytes(n: number): string {
  const units: [number, string][] = [
    [1024 ** 3, "GiB"],
    [1024 ** 2, "MiB"],
    [1024, "KiB"],
  ];
  for (const [size, unit] of units) if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  return `${n} bytes`;
}
