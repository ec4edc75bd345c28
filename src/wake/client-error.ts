/**
 * Requests Node's parser refuses (a malformed request line or header, headers too large) get the
 * proxy's JSON error shape instead of Node's bare status line, when the socket can still take it.
 */
import type { Duplex } from "node:stream";

const ANSWERS: Record<string, [number, string, string]> = {
  HPE_HEADER_OVERFLOW: [431, "Request Header Fields Too Large", "request headers too large"],
  HPE_REQUEST_TIMEOUT: [408, "Request Timeout", "request not received in time"],
};

/** The server's "clientError" handler. */
export function answerClientError(err: NodeJS.ErrnoException & { bytesParsed?: number }, socket: Duplex): void {
  if (err.code === "ECONNRESET" || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, reason, error] = ANSWERS[err.code ?? ""] ?? [400, "Bad Request", "malformed request"];
  const body = JSON.stringify({ error });
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}
