/** Buffers the body of a request that must wait for its VM, so it can be replayed once the VM is up. */
import type { IncomingMessage } from "node:http";
import { BodyTooLargeError, ClientGoneError, HeldBytesFullError, type HeldLease } from "../lifecycle/held-bytes.ts";

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
