import type { Context } from "hono";
import { AppError } from "../errors.ts";

/** Largest route API request body. */
export const MAX_API_BODY = 64 * 1024;

/**
 * Reads a JSON request body. No Content-Type is read as JSON (a bare HTTP client sends none); any
 * other type than JSON is a 415, the form type `curl -d` sends by default included: its answer
 * says how to send JSON with curl. Bodies over `limit` are a 413, read no further than the limit.
 */
export async function readJsonBody(c: Context, limit = MAX_API_BODY): Promise<unknown> {
  const type = (c.req.header("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type && type !== "application/json" && !type.endsWith("+json")) {
    const curl = type === "application/x-www-form-urlencoded" ? " (with curl -d, add -H 'Content-Type: application/json')" : "";
    throw new AppError(415, `unsupported content type "${type}": send application/json${curl}`);
  }
  const bytes = await readBodyBytes(c, limit);
  if (bytes === undefined) throw new AppError(400, "request body is empty: send a JSON object");
  return parseJson(bytes.toString("utf8"));
}

/**
 * A request body as bytes, read no further than `limit` (413 past it, declared or counted);
 * undefined when the request has no body stream at all.
 */
export async function readBodyBytes(c: Context, limit: number): Promise<Buffer | undefined> {
  const declared = Number(c.req.header("content-length") ?? NaN);
  if (declared > limit) throw tooLarge(limit);
  // With a declared length (the usual case) the whole body is read at once: the Node adapter then
  // skips building a web stream. Only a chunked body is counted as it arrives.
  if (Number.isInteger(declared) && declared >= 0) return Buffer.from(await clientRead(c.req.arrayBuffer()));
  const stream = c.req.raw.body;
  if (!stream) return undefined;
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await clientRead(reader.read());
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge(limit);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

function parseJson(text: string): unknown {
  if (!text.trim()) throw new AppError(400, "request body is empty: send a JSON object");
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new AppError(400, `request body is not valid JSON: ${(err as Error).message}`);
  }
}

/** nginx's status for "the client closed the request"; it only reaches metrics and the log. */
export const CLIENT_CLOSED = 499;

/**
 * A body read can only fail because the client's connection did (it closed before sending what it
 * announced): that is the client leaving, not a fault of ours or of the database, and the Node
 * adapter reports it with the same ECONNRESET a database connection would.
 */
async function clientRead<T>(read: Promise<T>): Promise<T> {
  try {
    return await read;
  } catch (err) {
    throw new AppError(CLIENT_CLOSED, "client closed the connection before sending the whole body", { code: "client_closed_request", cause: err });
  }
}

const tooLarge = (limit: number) =>
  new AppError(413, `request body too large (limit ${limit >= 1024 * 1024 ? `${limit / (1024 * 1024)} MiB` : `${limit / 1024} KiB`})`);
