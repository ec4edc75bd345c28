/**
 * Request bodies held in memory while their VMs wake: the process-wide ceiling on their bytes, and
 * the ways holding one ends early (too large, the ceiling reached, the client gone).
 */
import { Gauge, type Registry } from "prom-client";
import { FailureError } from "./failure.ts";

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
