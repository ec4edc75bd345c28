/**
 * The CLI's HTTP calls to the route API and the VM API: one request, the raw body kept for --json,
 * and every failure turned into the one line people see (never the API key).
 */

/** A failure to show as `error: <message>` (then its hint lines) with exit code 1. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    /** Lines that say what to do about it (shown after the message). */
    readonly hint?: string,
    /** The API's own error text, when it answered one (what --json reports as `error`). */
    readonly apiError?: string,
  ) {
    super(message);
    this.name = "CliError";
  }
}

export interface ApiTarget {
  /** Base URL without a trailing slash. */
  url: string;
  key: string | undefined;
  /** Which API this is, for messages: "route API" or "VM API". */
  name: string;
  /** Appended to "cannot reach …" (how to start the missing server). */
  startHint: string;
  /** Shown after 401 answers: where the key came from, or where none was found (one or more lines). */
  authHint: string;
  timeoutMs: number;
}

export interface ApiAnswer {
  status: number;
  /** The body exactly as received (what --json prints). */
  text: string;
  json: unknown;
}

/** The first errno-style code in an error's cause chain (fetch wraps socket errors, sometimes in an AggregateError). */
function errorCode(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  const queue: unknown[] = [err];
  while (queue.length) {
    const e = queue.shift() as { code?: unknown; cause?: unknown; errors?: unknown } | undefined;
    if (!e || typeof e !== "object" || seen.has(e)) continue;
    seen.add(e);
    if (typeof e.code === "string" && e.code !== "ABORT_ERR") return e.code;
    queue.push(e.cause);
    if (Array.isArray(e.errors)) queue.push(...e.errors);
  }
  return undefined;
}

/** The message of the deepest cause: fetch's own is only "fetch failed". */
function innermostMessage(err: unknown): string {
  let e = err as { message?: unknown; cause?: unknown } | undefined;
  while (e && typeof e.cause === "object" && e.cause !== null) e = e.cause as typeof e;
  return typeof e?.message === "string" && e.message ? e.message : "network error";
}

/** Sends one request; resolves with any 2xx answer, throws CliError for everything else. */
export async function callApi(
  doFetch: typeof fetch,
  target: ApiTarget,
  method: "GET" | "POST" | "DELETE",
  path: string,
  body?: unknown,
): Promise<ApiAnswer> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (target.key) headers.authorization = `Bearer ${target.key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let res: Response;
  let text: string;
  try {
    res = await doFetch(`${target.url}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(target.timeoutMs),
    });
    text = await res.text();
  } catch (err) {
    const name = (err as Error)?.name;
    if (name === "TimeoutError" || name === "AbortError") {
      throw new CliError(`the ${target.name} at ${target.url} did not answer within ${target.timeoutMs / 1000} s`);
    }
    const code = errorCode(err);
    if (code === "ECONNREFUSED") throw new CliError(`cannot reach the ${target.name} at ${target.url}: ${target.startHint}`);
    throw new CliError(`cannot reach the ${target.name} at ${target.url}: ${code ?? innermostMessage(err)}`);
  }
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (res.status >= 200 && res.status < 300) {
    if (json === undefined) throw new CliError(`the ${target.name} at ${target.url} answered HTTP ${res.status} without JSON: is it really the ${target.name}?`, res.status);
    return { status: res.status, text, json };
  }
  const apiError = json && typeof json === "object" && typeof (json as { error?: unknown }).error === "string" ? (json as { error: string }).error : undefined;
  if (apiError === undefined) {
    throw new CliError(`the ${target.name} at ${target.url} answered HTTP ${res.status} without an error message: is it really the ${target.name}?`, res.status);
  }
  throw new CliError(`${apiError} (HTTP ${res.status})`, res.status, res.status === 401 ? target.authHint : undefined, apiError);
}
