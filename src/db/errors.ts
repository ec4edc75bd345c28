/**
 * Telling "the database cannot serve now" (an outage, a restart, a restore, a full server: retry
 * later) from "this statement is wrong" (a bug). Classified by SQLSTATE class and by the connection
 * errors of the drivers and of Node, so a condition nobody listed by name still lands on the right
 * side: the answer to the first is a 503 with Retry-After, to the second a 500.
 */

/** A query that got no answer within its deadline (the TCP path may be stalled). */
export class DatabaseTimeoutError extends Error {
  readonly code = "DB_TIMEOUT";
  constructor(readonly what: string, readonly ms: number) {
    super(`${what} did not answer within ${ms} ms`);
    this.name = "DatabaseTimeoutError";
  }
}

/** The database answers, but its migrations are not all applied or its schema is not whole (being restored, or older). */
export class DatabaseNotMigratedError extends Error {
  readonly code = "DB_NOT_MIGRATED";
  /** `problem`: what is missing, in words ("2 of 4 migrations applied"). */
  constructor(problem: string) {
    super(problem);
    this.name = "DatabaseNotMigratedError";
  }
}

/**
 * SQLSTATE classes in which every condition means the server cannot do the work now, whatever the
 * statement: https://www.postgresql.org/docs/current/errcodes-appendix.html
 */
const UNAVAILABLE_CLASSES: Record<string, string> = {
  "08": "connection exception",
  "28": "the database refused our credentials",
  "3D": "the database does not exist",
  "40": "transaction rolled back by the server (serialization failure or deadlock)",
  "53": "the server is out of resources (connections, memory, disk)",
  "55": "the database is not in a state to serve (e.g. not accepting connections)",
  "57": "operator intervention (shutdown, terminated connection, statement timeout)",
  "58": "system error on the database server",
  XX: "internal error of the database server",
};

/** Single conditions outside those classes that mean the same. */
const UNAVAILABLE_CODES: Record<string, string> = {
  "25006": "the database is read-only (a standby, or a failover in progress)",
  "25P03": "the server ended an idle transaction",
  "3F000": "the schema does not exist (database not migrated or being restored)",
  "42P01": "a table does not exist (database not migrated or being restored)",
};

/** Connection failures named by postgres.js (not SQLSTATEs). */
const DRIVER_CODES: Record<string, string> = {
  CONNECTION_CLOSED: "the connection was closed",
  CONNECTION_ENDED: "the connection pool is closed",
  CONNECTION_DESTROYED: "the connection was destroyed",
  CONNECT_TIMEOUT: "connecting timed out",
  DB_TIMEOUT: "no answer within the query deadline",
  DB_NOT_MIGRATED: "migrations are not all applied",
};

export interface Unavailable {
  /** What happened, for the log line: the code and its meaning, never a driver message. */
  cause: string;
  /** The code that decided (SQLSTATE, driver or errno code). */
  code: string;
  /**
   * True when the failure is about the connection itself (no statement result came back), so a
   * read can be sent again on another connection.
   */
  connection: boolean;
}

/** Every error in `err`'s chain: drizzle wraps driver errors in `cause`, Node's dialer in `errors`. */
function* chain(err: unknown, depth = 0): Generator<any> {
  if (!err || typeof err !== "object" || depth > 8) return;
  yield err;
  const e = err as { cause?: unknown; errors?: unknown };
  if (Array.isArray(e.errors)) for (const inner of e.errors) yield* chain(inner, depth + 1);
  yield* chain(e.cause, depth + 1);
}

const SQLSTATE = /^[0-9A-Z]{5}$/;

/**
 * Failures after which sending a read again would only wait as long once more (a timeout) or
 * cannot work (the pool is shutting down, the schema is missing).
 */
const NOT_RESENDABLE = new Set(["CONNECT_TIMEOUT", "CONNECTION_ENDED", "CONNECTION_DESTROYED", "DB_TIMEOUT", "DB_NOT_MIGRATED"]);
/** The server ended the session (terminated backend, shutdown, still starting): a new one may work. */
const CONNECTION_ENDED_BY_SERVER = new Set(["57P01", "57P02", "57P03"]);

/** Why the database cannot serve now, or undefined when `err` is not that kind of failure. */
export function databaseUnavailable(err: unknown): Unavailable | undefined {
  for (const e of chain(err)) {
    const code = typeof e.code === "string" ? e.code : undefined;
    if (code && DRIVER_CODES[code]) return { code, cause: `${code}: ${DRIVER_CODES[code]}`, connection: !NOT_RESENDABLE.has(code) };
    // Node's socket errors carry the failed syscall (connect, read, write, getaddrinfo).
    if (code && typeof e.syscall === "string") {
      return { code, cause: `${code} on ${e.syscall}: the database cannot be reached`, connection: true };
    }
    // A PGlite instance that was closed (the embedded database is going away with the process).
    if (typeof e.message === "string" && /PGlite is closed/i.test(e.message)) {
      return { code: "PGLITE_CLOSED", cause: "the embedded database is closed", connection: true };
    }
    // Node's errno codes are letters only; a SQLSTATE has a digit, or comes with a server severity.
    if (code && SQLSTATE.test(code) && (/\d/.test(code) || typeof e.severity === "string")) {
      const meaning = UNAVAILABLE_CODES[code] ?? UNAVAILABLE_CLASSES[code.slice(0, 2)];
      if (meaning) return { code, cause: `SQLSTATE ${code}: ${meaning}`, connection: code.startsWith("08") || CONNECTION_ENDED_BY_SERVER.has(code) };
    }
  }
  return undefined;
}
