import * as v from "valibot";
import { SUBDOMAIN_LABEL } from "./subdomain.ts";

/** A listen address: `:8080` (all interfaces) or `host:8080`. Port 0 asks the OS for a free port. */
export interface ListenAddr {
  host: string | undefined;
  port: number;
}

const DURATION_UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a Go duration (`60s`, `1m30s`, `250ms`, `0`) into milliseconds; undefined when malformed. */
export function parseDuration(text: string): number | undefined {
  const s = text.trim();
  if (s === "0") return 0;
  if (!/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(s)) return undefined;
  let total = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) total += Number(m[1]) * DURATION_UNITS[m[2]!]!;
  return Math.round(total);
}

/**
 * Formats milliseconds in Go's duration syntax the way people write it, without zero units
 * (`1m`, not Go's `1m0s`; `1m30s`, `2h`, `250ms`): what parseDuration reads back.
 */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  if (ms < 1000) return `${ms}ms`;
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const s = (ms % 60_000) / 1000;
  return `${h ? `${h}h` : ""}${m ? `${m}m` : ""}${s ? `${s}s` : ""}`;
}

/** Parses `:8080`, `host:8080` or `[::1]:8080`; undefined when malformed. */
export function parseAddr(text: string): ListenAddr | undefined {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})$/.exec(text.trim());
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  const host = m[1] ? m[1].replace(/^\[|\]$/g, "") : undefined;
  return { host, port };
}

/** A URL base a client can dial for a listen address (`:8080` → `http://127.0.0.1:8080`). */
export function addrToUrl(addr: ListenAddr): string {
  const host = !addr.host || addr.host === "0.0.0.0" || addr.host === "::" ? "127.0.0.1" : addr.host;
  return `http://${host.includes(":") ? `[${host}]` : host}:${addr.port}`;
}

/** Parses a byte size: `10485760`, `64KiB`, `10MiB`, `1GiB` (also KB/MB/GB as powers of 1000). */
export function parseBytes(text: string): number | undefined {
  const m = /^(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?$/.exec(text.trim());
  if (!m) return undefined;
  const mult: Record<string, number> = { B: 1, KB: 1e3, KiB: 1024, MB: 1e6, MiB: 1024 ** 2, GB: 1e9, GiB: 1024 ** 3 };
  return Number(m[1]) * mult[m[2] ?? "B"]!;
}


function custom<T>(parse: (s: string) => T | undefined, form: string) {
  return v.pipe(
    v.string(),
    v.check((s) => parse(s) !== undefined, form),
    v.transform((s) => parse(s) as T),
  );
}
const duration = custom(parseDuration, "a Go duration such as 60s, 1m30s or 250ms");
const positiveDuration = custom((s) => {
  const ms = parseDuration(s);
  return ms !== undefined && ms > 0 ? ms : undefined;
}, "a Go duration above zero such as 60s, 1m30s or 250ms");
const httpUrls = custom((s) => {
  const list = s.split(",").map((u) => u.trim()).filter(Boolean);
  const ok = list.length > 0 && list.every((u) => {
    try {
      const p = new URL(u).protocol;
      return p === "http:" || p === "https:";
    } catch {
      return false;
    }
  });
  return ok ? list.map((u) => u.replace(/\/+$/, "")) : undefined;
}, "comma-separated http:// or https:// URLs");
const addr = custom(parseAddr, "an address such as :8080 or 127.0.0.1:8080");
const bytes = custom(parseBytes, "a size in bytes such as 10485760, 64KiB or 10MiB");
const intIn = (min: number, max: number) =>
  custom((s) => (/^\d+$/.test(s) && Number(s) >= min && Number(s) <= max ? Number(s) : undefined), `a whole number from ${min} to ${max}`);
const httpUrl = custom((s) => {
  try {
    const u = new URL(s);
    return u.protocol === "http:" || u.protocol === "https:" ? s.replace(/\/+$/, "") : undefined;
  } catch {
    return undefined;
  }
}, "an http:// or https:// URL");
const pgUrl = custom((s) => (/^postgres(ql)?:\/\//.test(s) ? s : undefined), "a postgres:// or postgresql:// URL");
const nonEmpty = custom((s) => (s.trim() ? s.trim() : undefined), "a non-empty string");
const baseDomain = custom(
  (s) => {
    const d = s.trim().toLowerCase().replace(/\.$/, "");
    return d.split(".").every((l) => SUBDOMAIN_LABEL.test(l)) ? d : undefined;
  },
  "a DNS name such as hatch.local (labels of a-z, 0-9 and inner hyphens)",
);
const apiKeys = custom(
  (s) => {
    const keys = s.split(",").map((k) => k.trim()).filter(Boolean);
    if (!keys.length) return undefined;
    return keys.every((k) => !k.startsWith("sha256:") || /^sha256:[0-9a-f]{64}$/.test(k)) ? keys : undefined;
  },
  "comma-separated keys, each plain or sha256:<64 lowercase hex digits>",
);
const entryPoints = custom(
  (s) => {
    const eps = s.split(",").map((e) => e.trim()).filter(Boolean);
    return eps.length && eps.every((e) => /^[A-Za-z0-9_-]+$/.test(e)) ? eps : undefined;
  },
  "comma-separated Traefik entry point names such as web,websecure",
);
const simUsers = custom(
  (s) => {
    const users = new Map<string, string>();
    for (const part of s.split(",").map((p) => p.trim()).filter(Boolean)) {
      const m = /^([^\s:,]+):([^\s:,]+)$/.exec(part);
      if (!m || users.has(m[1]!)) return undefined;
      users.set(m[1]!, m[2]!);
    }
    return users.size ? (users as ReadonlyMap<string, string>) : undefined;
  },
  "comma-separated key:user pairs such as ka:alice,kb:bob (each key once)",
);
/** 32 random bytes, as 64 hex digits or base64 (what `openssl rand -hex 32` or `-base64 32` prints). */
const secretKey32 = custom((s) => {
  const t = s.trim();
  if (/^[0-9a-fA-F]{64}$/.test(t)) return Buffer.from(t, "hex");
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(t)) {
    const b = Buffer.from(t, "base64");
    if (b.length === 32) return b;
  }
  return undefined;
}, "32 random bytes as 64 hex digits or base64, e.g. from `openssl rand -hex 32`");
const logLevel = v.picklist(["debug", "info", "warn", "error", "silent"], "one of debug, info, warn, error, silent");

/**
 * Every environment variable the project reads, with its default and meaning.
 * README's configuration table is checked against this list by a test.
 */
export const ENV_VARS = {
  HATCH_HTTP_ADDR: { default: ":8080", schema: addr, doc: "Route API listen address (also serves /traefik/config)." },
  HATCH_PROXY_ADDR: { default: ":9090", schema: addr, doc: "Public proxy address: Traefik's `web` entry point, or the embedded proxy when no Traefik is found." },
  HATCH_WAKE_ADDR: { default: ":9091", schema: addr, doc: "Wake sidecar listen address (Traefik's catch-all target)." },
  HATCH_PROXY_BASE_DOMAIN: { default: "hatch.local", schema: baseDomain, doc: "Base domain: a route `myapp` answers on `myapp.<base>`." },
  HATCH_PROXY_WAKE_TIMEOUT: { default: "60s", schema: duration, doc: "How long a request may wait for its VM to wake and its port to answer (then 504)." },
  DATABASE_URL: { default: undefined, schema: pgUrl, doc: "PostgreSQL URL. Unset: embedded PGlite in HATCH_DATA_DIR." },
  HATCH_DATA_DIR: { default: "./data", schema: nonEmpty, doc: "Directory for the embedded database, the generated API key and the simulator's VMs." },
  HATCH_API_KEYS: { default: undefined, schema: apiKeys, doc: "Comma-separated API keys (plain or `sha256:<hex>`). Unset (and no verify URL): a key is generated once and kept in the data dir." },
  HATCH_BETTER_AUTH_VERIFY_URL: { default: undefined, schema: httpUrl, doc: "Verify keys with Hatch's better-auth endpoint; routes are then scoped per user." },
  HATCH_CREDENTIALS_KEY: {
    default: undefined,
    schema: secretKey32,
    doc: "Key that encrypts the API keys hatch-proxy keeps for route owners (required with HATCH_BETTER_AUTH_VERIFY_URL: Hatch acts on a VM only for its owner's key). 32 bytes, hex or base64.",
  },
  HATCH_AUTH_CACHE_TTL: { default: "30s", schema: duration, doc: "How long a key the verifier accepted is trusted without asking again (a revoked key works this long at most); 0 = ask every time." },
  HATCH_API_URL: { default: undefined, schema: httpUrl, doc: "Hatch VM API base URL. Unset: the built-in VM simulator." },
  HATCH_API_KEY: { default: undefined, schema: nonEmpty, doc: "API key sent to HATCH_API_URL." },
  HATCH_SIM_ADDR: { default: "127.0.0.1:8090", schema: addr, doc: "Listen address of the built-in VM simulator's API." },
  HATCH_SIM_RESTORE_MS: { default: "800", schema: intIn(0, 600_000), doc: "Simulated restore/start time in milliseconds (per-VM `restore_ms` overrides it)." },
  HATCH_SIM_USERS: { default: undefined, schema: simUsers, doc: "Simulator tenancy as on Hatch: `key:user,…`; every call then needs one of these keys, a VM belongs to the user who created it, and another user's VM answers 404. Unset: no key needed." },
  HATCH_SIM_NETWORK: {
    default: "loopback",
    schema: v.picklist(["loopback", "bridge"], "one of loopback, bridge"),
    doc: "Where simulated VMs live: `loopback` (host addresses 127.x.y.N; no root needed) or `bridge` (a network namespace each on a Linux bridge, unreachable while asleep, as on Hatch; needs root, and a network namespace with nothing but lo: `unshare -n`).",
  },
  HATCH_SIM_SUBNET: { default: "10.213.0.0/24", schema: custom((s) => (/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(s.trim()) ? s.trim() : undefined), "an IPv4 network such as 10.213.0.0/24"), doc: "The bridge network's subnet (HATCH_SIM_NETWORK=bridge): the bridge takes the first address, VMs the others (Hatch uses 172.16.0.0/24)." },
  HATCH_SIM_SNAPSHOT_MS: { default: "1500", schema: intIn(0, 3_600_000), doc: "On the bridge, how long a snapshot keeps a simulated VM paused (still `running`, a black hole) before its link goes and it is `snapshotted`, as Hatch's upload does." },
  HATCH_SIM_SNAPSHOT_LIMIT: { default: "10", schema: intIn(0, 1_000_000), doc: "Snapshots per simulated VM before Hatch's 403 `snapshot limit reached (n/10)`; 0 = no limit." },
  HATCH_SIM_REUSE_IPS: { default: "0", schema: v.picklist(["0", "1"], "0 or 1"), doc: "1: a new simulated VM gets the lowest address no running VM holds, even one a snapshotted VM keeps (Hatch after a hatchd restart; bridge only)." },
  HATCH_SIM_START: { default: "1", schema: v.picklist(["0", "1"], "0 or 1"), doc: "1: the simulator serves `POST /vms/{id}/start` for stopped VMs; 0: it answers as Hatch, which has no start call." },
  HATCH_SIM_IP_PREFIX: { default: "127.0.1", schema: custom((s) => (/^127\.\d{1,3}\.\d{1,3}$/.test(s) ? s : undefined), "three loopback octets such as 127.0.1"), doc: "Simulated VMs get guest IPs <prefix>.N (loopback only)." },
  HATCH_VM_SYNC_INTERVAL: { default: "5s", schema: duration, doc: "How often the VM directory re-reads every VM state from the platform." },
  HATCH_PLATFORM_TIMEOUT: { default: "5s", schema: duration, doc: "Timeout of each VM platform call other than a wake." },
  HATCH_PLATFORM_SLEEP_TIMEOUT: { default: "10m", schema: positiveDuration, doc: "Deadline of a snapshot or stop call. Hatch runs the snapshot on the request: a caller that gives up leaves the VM paused, so hatch-proxy waits this long, then re-reads the VM." },
  HATCH_VM_RESPONSE_TIMEOUT: { default: "60s", schema: duration, doc: "Longest wait for a VM's response headers on Traefik's direct routers (nginx's default read timeout); 0 = none. A connection to a VM the platform pauses behind hatch-proxy's back never answers: past this a GET falls back to the sidecar, which wakes the VM, and other methods get a 504. A GET slower than this is run again by the sidecar and its answer passed on, shown with status 307 (Traefik's errors middleware fixes the status): raise it for slower apps." },
  HATCH_TRAEFIK_ENTRYPOINTS: { default: "web", schema: entryPoints, doc: "Entry points the generated routers attach to." },
  HATCH_TRAEFIK_CERT_RESOLVER: { default: undefined, schema: nonEmpty, doc: "When set, routers get TLS with this cert resolver and a wildcard domain for the base domain." },
  HATCH_TRAEFIK_TOKEN: { default: undefined, schema: nonEmpty, doc: "Bearer token required on /traefik/config. Unset: only loopback clients may read it." },
  HATCH_ROUTE_API_URL: { default: undefined, schema: httpUrl, doc: "URL Traefik uses to reach the route API (the `api.<base>` router and the HTTP provider endpoint). Default: derived from HATCH_HTTP_ADDR." },
  HATCH_TRAEFIK_PLATFORM_URL: { default: undefined, schema: httpUrl, doc: "URL Traefik uses to reach the VM platform's API, for every call on `api.<base>` that is not a route call. Default: HATCH_API_URL. With the built-in simulator (which checks no key) it stays unset and those calls go through the route API, which checks the key first." },
  HATCH_WAKE_URL: { default: undefined, schema: httpUrl, doc: "URL Traefik uses to reach the wake sidecar. Default: derived from HATCH_WAKE_ADDR." },
  HATCH_WAKE_SECRET: { default: undefined, schema: nonEmpty, doc: "Shared secret Traefik adds (X-Hatch-Wake-Secret) and the sidecar requires." },
  HATCH_WAKE_MAX_BODY: { default: "10MiB", schema: bytes, doc: "Largest request body held while a VM wakes (larger → 413)." },
  HATCH_WAKE_MAX_BUFFERED: { default: "64MiB", schema: bytes, doc: "Most request-body bytes one process holds in memory for all waking VMs together (more → 503 with Retry-After); at least HATCH_WAKE_MAX_BODY." },
  HATCH_WAKE_MAX_WAITERS: { default: "1000", schema: intIn(1, 1_000_000), doc: "Most requests held per waking VM (more → 503 with Retry-After)." },
  HATCH_WAKE_PAGE_AFTER: { default: "1s", schema: duration, doc: "Browsers still waiting after this get a self-refreshing 'waking' page; 0 = never." },
  HATCH_IDLE_TIMEOUT: { default: "10m", schema: duration, doc: "A running VM with routes and no activity for this long is put to sleep; 0 = never." },
  HATCH_IDLE_CHECK_INTERVAL: { default: "1m", schema: positiveDuration, doc: "How often the idle sweeper looks for idle VMs (one sweeper acts at a time across replicas)." },
  HATCH_IDLE_ACTION: { default: "snapshot", schema: v.picklist(["snapshot", "stop"], "one of snapshot, stop"), doc: "How an idle VM is put to sleep: `snapshot` (memory kept, fast restore) or `stop`." },
  HATCH_IDLE_DRAIN_TIMEOUT: { default: "30s", schema: positiveDuration, doc: "Longest wait for in-flight requests and open connections before a sleep; past it the sleep is cancelled, never forced." },
  HATCH_IDLE_SSH_CONNTRACK: { default: "/proc/net/nf_conntrack", schema: nonEmpty, doc: "Connection-tracking table read for SSH sessions to VMs (an established connection to a VM's `ssh_port` keeps it awake, as in Hatch's own monitor); readable only in the Hatch host's network namespace." },
  HATCH_TRAEFIK_API_URLS: { default: undefined, schema: httpUrls, doc: "Comma-separated URLs of the Traefik instances' API/metrics entry point (e.g. `http://127.0.0.1:9092`): their direct-path traffic counts as activity, and a sleep waits until each has dropped the VM's routers. `npm start` sets its own." },
  HATCH_LOG_LEVEL: { default: "info", schema: logLevel, doc: "Log level: debug, info, warn, error or silent." },
  HATCH_PROXY_FRONT: { default: "auto", schema: v.picklist(["auto", "traefik", "embedded"], "one of auto, traefik, embedded"), doc: "What `npm start` serves HATCH_PROXY_ADDR with: `auto` (Traefik when a binary is found, else the embedded proxy), `traefik` (fail without one), `embedded`." },
  TRAEFIK_BIN: { default: undefined, schema: nonEmpty, doc: "Traefik binary `npm start` runs in front; default: PATH, then the build cache of scripts/traefik.sh." },
  HATCH_TRAEFIK_HANG_TIMEOUT: { default: "10s", schema: positiveDuration, doc: "The Traefik `npm start` runs is killed and restarted when it is alive but answers no ping for this long." },
} as const;

type Vars = typeof ENV_VARS;
type Parsed<K extends keyof Vars> = v.InferOutput<Vars[K]["schema"]>;

export interface Config {
  httpAddr: ListenAddr;
  proxyAddr: ListenAddr;
  wakeAddr: ListenAddr;
  baseDomain: string;
  wakeTimeoutMs: number;
  databaseUrl: string | undefined;
  dataDir: string;
  apiKeys: string[] | undefined;
  authVerifyUrl: string | undefined;
  /** HATCH_CREDENTIALS_KEY: seals the keys kept for route owners (per-user mode). */
  credentialsKey: Buffer | undefined;
  authCacheTtlMs: number;
  hatchApiUrl: string | undefined;
  hatchApiKey: string | undefined;
  simAddr: ListenAddr;
  simRestoreMs: number;
  simIpPrefix: string;
  simUsers: ReadonlyMap<string, string> | undefined;
  simNetwork: "loopback" | "bridge";
  simSubnet: string;
  simSnapshotMs: number;
  simSnapshotLimit: number;
  simReuseIps: boolean;
  simStart: boolean;
  vmSyncIntervalMs: number;
  platformTimeoutMs: number;
  platformSleepTimeoutMs: number;
  vmResponseTimeoutMs: number;
  traefikEntryPoints: string[];
  traefikCertResolver: string | undefined;
  traefikToken: string | undefined;
  routeApiUrl: string;
  /**
   * Where Traefik sends `api.<base>` calls that are not route calls (the VM platform's API);
   * undefined: to the route API, which checks the key and relays them.
   */
  traefikPlatformUrl: string | undefined;
  wakeUrl: string;
  wakeSecret: string | undefined;
  wakeMaxBody: number;
  wakeMaxBuffered: number;
  wakeMaxWaiters: number;
  wakePageAfterMs: number;
  idleTimeoutMs: number;
  idleCheckIntervalMs: number;
  idleAction: "snapshot" | "stop";
  idleDrainTimeoutMs: number;
  idleSshConntrack: string;
  traefikApiUrls: string[];
  logLevel: "debug" | "info" | "warn" | "error" | "silent";
  proxyFront: "auto" | "traefik" | "embedded";
  traefikBin: string | undefined;
  traefikHangTimeoutMs: number;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join("\n")}`);
  }
}

/** Query parameters whose value is a credential (`password=`, `sslpassword=`, `auth_token=`, `apikey=`…). */
const SECRET_PARAM = /([?&;][^=&#\s]*(?:pass|pwd|secret|token|key|auth)[^=&#\s]*=)[^&#\s,]*/gi;

/**
 * A value as it may be printed: in every comma-separated part, the password of a URL (or of a
 * `user:password@host` form) and secret-looking query parameters become `***`; a URL whose user part
 * has no password keeps nothing of it (it may be a token). The last `@` ends the user part, so an
 * unencoded `@` or `/` in a password is covered.
 */
export function redactValue(text: string): string {
  return text
    .split(",")
    .map((part) => {
      const at = part.lastIndexOf("@");
      if (at > 0) {
        const scheme = part.indexOf("://");
        const start = scheme >= 0 && scheme < at ? scheme + 3 : part.lastIndexOf(" ", at) + 1;
        const userinfo = part.slice(start, at);
        const colon = userinfo.indexOf(":");
        if (colon >= 0) part = `${part.slice(0, start)}${userinfo.slice(0, colon)}:***${part.slice(at)}`;
        else if (scheme >= 0 && scheme < at && userinfo) part = `${part.slice(0, start)}***${part.slice(at)}`;
      }
      return part.replace(SECRET_PARAM, "$1***");
    })
    .join(",");
}

/** Parses the environment once. Throws ConfigError listing every bad variable (name, value, accepted form). */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(ENV_VARS) as [keyof Vars, Vars[keyof Vars]][]) {
    const raw = env[name];
    const given = raw !== undefined && raw !== "";
    const text = given ? raw : spec.default;
    if (text === undefined) continue;
    const r = v.safeParse(spec.schema as v.GenericSchema<string, unknown>, text);
    if (r.success) out[name] = r.output;
    else {
      const shown = /KEY|SECRET|TOKEN|PASSWORD|USERS/.test(name) ? "<hidden>" : JSON.stringify(redactValue(text));
      problems.push(`${name}=${shown}: expected ${r.issues[0]?.message ?? "a valid value"}`);
    }
  }
  // A body the per-body cap allows must fit the process-wide one, or it could never be held.
  const maxBody = out.HATCH_WAKE_MAX_BODY as number | undefined;
  const maxBuffered = out.HATCH_WAKE_MAX_BUFFERED as number | undefined;
  if (maxBody !== undefined && maxBuffered !== undefined && maxBuffered < maxBody) {
    problems.push(`HATCH_WAKE_MAX_BUFFERED=${JSON.stringify(env.HATCH_WAKE_MAX_BUFFERED || ENV_VARS.HATCH_WAKE_MAX_BUFFERED.default)}: expected at least HATCH_WAKE_MAX_BODY (${env.HATCH_WAKE_MAX_BODY || ENV_VARS.HATCH_WAKE_MAX_BODY.default})`);
  }
  if (out.HATCH_BETTER_AUTH_VERIFY_URL !== undefined && out.HATCH_API_KEYS !== undefined) {
    problems.push("HATCH_API_KEYS and HATCH_BETTER_AUTH_VERIFY_URL: set one of them (static keys for one tenant, or keys verified per user), not both");
  }
  if (out.HATCH_BETTER_AUTH_VERIFY_URL !== undefined && out.HATCH_CREDENTIALS_KEY === undefined && !problems.some((p) => p.startsWith("HATCH_CREDENTIALS_KEY="))) {
    problems.push(
      "HATCH_CREDENTIALS_KEY: required with HATCH_BETTER_AUTH_VERIFY_URL (Hatch wakes and sleeps a VM only for its owner's key, so hatch-proxy keeps each route owner's key, encrypted with this one); expected 32 random bytes as 64 hex digits or base64, e.g. from `openssl rand -hex 32`",
    );
  }
  if (out.HATCH_SIM_REUSE_IPS === "1" && out.HATCH_SIM_NETWORK !== "bridge") {
    problems.push("HATCH_SIM_REUSE_IPS=1: needs HATCH_SIM_NETWORK=bridge (two VMs cannot listen on one loopback address)");
  }
  if (problems.length) throw new ConfigError(problems);
  const get = <K extends keyof Vars>(k: K) => out[k] as Parsed<K>;
  const wakeAddr = get("HATCH_WAKE_ADDR") as ListenAddr;
  const httpAddr = get("HATCH_HTTP_ADDR") as ListenAddr;
  return {
    httpAddr,
    proxyAddr: get("HATCH_PROXY_ADDR") as ListenAddr,
    wakeAddr,
    baseDomain: get("HATCH_PROXY_BASE_DOMAIN") as string,
    wakeTimeoutMs: get("HATCH_PROXY_WAKE_TIMEOUT") as number,
    databaseUrl: out.DATABASE_URL as string | undefined,
    dataDir: get("HATCH_DATA_DIR") as string,
    apiKeys: out.HATCH_API_KEYS as string[] | undefined,
    authVerifyUrl: out.HATCH_BETTER_AUTH_VERIFY_URL as string | undefined,
    credentialsKey: out.HATCH_CREDENTIALS_KEY as Buffer | undefined,
    authCacheTtlMs: get("HATCH_AUTH_CACHE_TTL") as number,
    hatchApiUrl: out.HATCH_API_URL as string | undefined,
    hatchApiKey: out.HATCH_API_KEY as string | undefined,
    simAddr: get("HATCH_SIM_ADDR") as ListenAddr,
    simRestoreMs: get("HATCH_SIM_RESTORE_MS") as number,
    simIpPrefix: get("HATCH_SIM_IP_PREFIX") as string,
    simUsers: out.HATCH_SIM_USERS as ReadonlyMap<string, string> | undefined,
    simNetwork: get("HATCH_SIM_NETWORK") as Config["simNetwork"],
    simSubnet: get("HATCH_SIM_SUBNET") as string,
    simSnapshotMs: get("HATCH_SIM_SNAPSHOT_MS") as number,
    simSnapshotLimit: get("HATCH_SIM_SNAPSHOT_LIMIT") as number,
    simReuseIps: get("HATCH_SIM_REUSE_IPS") === "1",
    simStart: get("HATCH_SIM_START") === "1",
    vmSyncIntervalMs: get("HATCH_VM_SYNC_INTERVAL") as number,
    platformTimeoutMs: get("HATCH_PLATFORM_TIMEOUT") as number,
    platformSleepTimeoutMs: get("HATCH_PLATFORM_SLEEP_TIMEOUT") as number,
    vmResponseTimeoutMs: get("HATCH_VM_RESPONSE_TIMEOUT") as number,
    traefikEntryPoints: get("HATCH_TRAEFIK_ENTRYPOINTS") as string[],
    traefikCertResolver: out.HATCH_TRAEFIK_CERT_RESOLVER as string | undefined,
    traefikToken: out.HATCH_TRAEFIK_TOKEN as string | undefined,
    routeApiUrl: (out.HATCH_ROUTE_API_URL as string | undefined) ?? addrToUrl(httpAddr),
    // Never the built-in simulator straight from Traefik: it checks no key, and api.<base> is public.
    traefikPlatformUrl: (out.HATCH_TRAEFIK_PLATFORM_URL as string | undefined) ?? (out.HATCH_API_URL as string | undefined),
    wakeUrl: (out.HATCH_WAKE_URL as string | undefined) ?? addrToUrl(wakeAddr),
    wakeSecret: out.HATCH_WAKE_SECRET as string | undefined,
    wakeMaxBody: get("HATCH_WAKE_MAX_BODY") as number,
    wakeMaxBuffered: get("HATCH_WAKE_MAX_BUFFERED") as number,
    wakeMaxWaiters: get("HATCH_WAKE_MAX_WAITERS") as number,
    wakePageAfterMs: get("HATCH_WAKE_PAGE_AFTER") as number,
    idleTimeoutMs: get("HATCH_IDLE_TIMEOUT") as number,
    idleCheckIntervalMs: get("HATCH_IDLE_CHECK_INTERVAL") as number,
    idleAction: get("HATCH_IDLE_ACTION") as Config["idleAction"],
    idleDrainTimeoutMs: get("HATCH_IDLE_DRAIN_TIMEOUT") as number,
    idleSshConntrack: get("HATCH_IDLE_SSH_CONNTRACK") as string,
    traefikApiUrls: (out.HATCH_TRAEFIK_API_URLS as string[] | undefined) ?? [],
    logLevel: get("HATCH_LOG_LEVEL") as Config["logLevel"],
    proxyFront: get("HATCH_PROXY_FRONT") as Config["proxyFront"],
    traefikBin: out.TRAEFIK_BIN as string | undefined,
    traefikHangTimeoutMs: get("HATCH_TRAEFIK_HANG_TIMEOUT") as number,
  };
}

/** Config for tests: defaults, in-memory-friendly, overridable field by field. */
export function testConfig(overrides: Partial<Config> = {}): Config {
  return {
    ...loadConfig({ HATCH_LOG_LEVEL: "silent", HATCH_API_KEYS: "test-key" }),
    // Derived from HATCH_API_URL by the parser: a test that names a platform gets it here too.
    ...(overrides.hatchApiUrl && { traefikPlatformUrl: overrides.hatchApiUrl }),
    ...overrides,
  };
}
