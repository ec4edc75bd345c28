/**
 * Where the CLI sends its requests and with which key: flags first, then the CLI's own variables,
 * then what a local `npm start` uses, so commands work in the directory it runs in.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { addrToUrl, parseAddr } from "../config.ts";
import type { ApiTarget } from "./http-client.ts";

/** A bad flag or variable: shown with the usage, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

type Env = Record<string, string | undefined>;

const set = (s: string | undefined): s is string => s !== undefined && s.trim() !== "";

function checkUrl(text: string, from: string): string {
  let u: URL;
  try {
    u = new URL(text.trim());
  } catch {
    throw new UsageError(`${from}=${JSON.stringify(text)}: expected an http:// or https:// URL`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new UsageError(`${from}=${JSON.stringify(text)}: expected an http:// or https:// URL`);
  return u.toString().replace(/\/+$/, "");
}

function urlFromAddr(env: Env, name: string, fallback: string): string {
  const text = set(env[name]) ? env[name]! : fallback;
  const addr = parseAddr(text);
  if (!addr) throw new UsageError(`${name}=${JSON.stringify(text)}: expected an address such as :8080 or 127.0.0.1:8080`);
  return addrToUrl(addr);
}

/** The generated key `npm start` keeps in `<HATCH_DATA_DIR>/api-key`, or undefined when there is none. */
function keyFromFile(env: Env): string | undefined {
  const dir = set(env.HATCH_DATA_DIR) ? env.HATCH_DATA_DIR!.trim() : "./data";
  try {
    return readFileSync(join(dir, "api-key"), "utf8").split(/\r?\n/)[0]!.trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Route API: --api-url, HATCH_PROXY_URL, else HATCH_HTTP_ADDR (default :8080) on loopback.
 * Key: --api-key, HATCH_PROXY_API_KEY, the first plain key of HATCH_API_KEYS (inside a container
 * configured for the API), else the key file `npm start` wrote.
 */
export function routeApiTarget(env: Env, flags: { "api-url"?: string | undefined; "api-key"?: string | undefined }): ApiTarget {
  const url = set(flags["api-url"])
    ? checkUrl(flags["api-url"]!, "--api-url")
    : set(env.HATCH_PROXY_URL)
      ? checkUrl(env.HATCH_PROXY_URL!, "HATCH_PROXY_URL")
      : urlFromAddr(env, "HATCH_HTTP_ADDR", ":8080");
  const configured = env.HATCH_API_KEYS?.split(",").map((k) => k.trim()).find((k) => k && !k.startsWith("sha256:"));
  const key = set(flags["api-key"])
    ? flags["api-key"]!.trim()
    : set(env.HATCH_PROXY_API_KEY)
      ? env.HATCH_PROXY_API_KEY!.trim()
      : (configured ?? keyFromFile(env));
  return {
    url,
    key,
    name: "route API",
    startHint: "is hatch-proxy running? (npm start)",
    authHint: "hint: pass --api-key or set HATCH_PROXY_API_KEY (npm start prints its key and keeps it in data/api-key)",
    timeoutMs: 30_000,
  };
}

/**
 * VM API: --vm-api-url, HATCH_API_URL (a real Hatch), else the simulator on HATCH_SIM_ADDR
 * (default 127.0.0.1:8090). Key: --vm-api-key, else HATCH_API_KEY.
 */
export function vmApiTarget(env: Env, flags: { "vm-api-url"?: string | undefined; "vm-api-key"?: string | undefined }): ApiTarget {
  const url = set(flags["vm-api-url"])
    ? checkUrl(flags["vm-api-url"]!, "--vm-api-url")
    : set(env.HATCH_API_URL)
      ? checkUrl(env.HATCH_API_URL!, "HATCH_API_URL")
      : urlFromAddr(env, "HATCH_SIM_ADDR", "127.0.0.1:8090");
  const key = set(flags["vm-api-key"]) ? flags["vm-api-key"]!.trim() : set(env.HATCH_API_KEY) ? env.HATCH_API_KEY!.trim() : undefined;
  return {
    url,
    key,
    name: "VM API",
    startHint: "is the simulator running? (npm start, or hatch-proxy sim)",
    authHint: "hint: pass --vm-api-key or set HATCH_API_KEY",
    // Restores block until the VM runs (seconds on a real Hatch).
    timeoutMs: 120_000,
  };
}
