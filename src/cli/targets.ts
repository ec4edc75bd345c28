/**
 * Where the CLI sends its requests and with which key: flags first, then the CLI's own variables,
 * then what a local `npm start` uses, so commands work in the directory it runs in.
 */
import { readFileSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
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

/** The repository (or installed package) this CLI belongs to: where `npm start` runs and keeps `data/`. */
export const PROJECT_ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** Where a key file may be, and from where the CLI runs (both injectable for tests). */
export interface KeyPlaces {
  cwd: string;
  projectRoot: string;
}

/**
 * The files `npm start` may have written its key to: `<HATCH_DATA_DIR>/api-key`, a relative data
 * dir (`./data` by default) taken from the current directory and from the project's root, where
 * `npm start` runs whatever directory it was typed in.
 */
export function keyFileCandidates(env: Env, places: KeyPlaces = { cwd: process.cwd(), projectRoot: PROJECT_ROOT }): string[] {
  const dir = set(env.HATCH_DATA_DIR) ? env.HATCH_DATA_DIR!.trim() : "data";
  if (isAbsolute(dir)) return [join(dir, "api-key")];
  return [...new Set([resolve(places.cwd, dir, "api-key"), resolve(places.projectRoot, dir, "api-key")])];
}

/** The first readable key file among the candidates, with its path. */
function keyFromFile(candidates: string[]): { key: string; file: string } | undefined {
  for (const file of candidates) {
    try {
      const key = readFileSync(file, "utf8").split(/\r?\n/)[0]!.trim();
      if (key) return { key, file };
    } catch {
      // not there: try the next
    }
  }
  return undefined;
}

const KEY_HINT = "hint: pass --api-key or set HATCH_PROXY_API_KEY (npm start prints its key and keeps it in <HATCH_DATA_DIR, default data>/api-key)";

/**
 * Route API: --api-url, HATCH_PROXY_URL, else HATCH_HTTP_ADDR (default :8080) on loopback.
 * Key: --api-key, HATCH_PROXY_API_KEY, the first plain key of HATCH_API_KEYS (inside a container
 * configured for the API), else the key file `npm start` wrote (keyFileCandidates). A 401 says
 * which of these the key came from, or every file looked at.
 */
export function routeApiTarget(env: Env, flags: { "api-url"?: string | undefined; "api-key"?: string | undefined }, places?: KeyPlaces): ApiTarget {
  const url = set(flags["api-url"])
    ? checkUrl(flags["api-url"]!, "--api-url")
    : set(env.HATCH_PROXY_URL)
      ? checkUrl(env.HATCH_PROXY_URL!, "HATCH_PROXY_URL")
      : urlFromAddr(env, "HATCH_HTTP_ADDR", ":8080");
  const configured = env.HATCH_API_KEYS?.split(",").map((k) => k.trim()).find((k) => k && !k.startsWith("sha256:"));
  let key: string | undefined;
  let from: string;
  if (set(flags["api-key"])) [key, from] = [flags["api-key"]!.trim(), "hint: the key was --api-key"];
  else if (set(env.HATCH_PROXY_API_KEY)) [key, from] = [env.HATCH_PROXY_API_KEY!.trim(), "hint: the key came from HATCH_PROXY_API_KEY"];
  else if (configured) [key, from] = [configured, "hint: the key came from HATCH_API_KEYS"];
  else {
    const candidates = keyFileCandidates(env, places);
    const found = keyFromFile(candidates);
    key = found?.key;
    from = found ? `hint: the key came from ${found.file}` : `hint: no key given, and no key file at ${candidates.join(" or ")}`;
  }
  return {
    url,
    key,
    name: "route API",
    startHint: "is hatch-proxy running? (npm start)",
    authHint: `${from}\n${KEY_HINT}`,
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
