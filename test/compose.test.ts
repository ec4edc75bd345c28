/**
 * compose.yaml cannot run here (no Docker engine), so it is checked against the code: commands the
 * CLI knows, variables the config parser knows, addresses that reach the intended service through
 * compose's network layout, the same secrets on both ends, and a real Traefik run with the flags.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import { SERVICE_COMMANDS } from "../src/cli/commands.ts";
import { ENV_VARS, loadConfig, parseAddr, type Config, type ListenAddr } from "../src/config.ts";
import { silentLogger } from "../src/log.ts";
import { buildDynamicConfig, stableStringify } from "../src/traefik/config-builder.ts";
import type { ConfigService } from "../src/traefik/config-service.ts";
import { makeSnapshot, traefikSettings } from "../src/traefik/config-snapshot.ts";
import { traefikEndpoint } from "../src/traefik/endpoint.ts";
import postgres from "postgres";
import { runPeopleCommand } from "../src/cli/people.ts";
import { ADMIN_PG_URL, freePort, postgresEnabled, traefikBinary } from "./helpers/env.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const read = (name: string) => readFileSync(join(ROOT, name), "utf8");
const COMPOSE_TEXT = read("compose.yaml");
const ENV_EXAMPLE_TEXT = read(".env.example");

type Env = Record<string, string | undefined>;
type Doc = { services: Record<string, any>; volumes?: Record<string, unknown> };

/** Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR?err}`. */
function interpolate(text: string, env: Env): string {
  return text.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (m, name, op, arg, bare) => {
    if (m === "$$") return "$";
    if (bare) return env[bare] ?? "";
    const value = env[name];
    if (!op) return value ?? "";
    const missing = value === undefined || (op.startsWith(":") && value === "");
    if (op.endsWith("-")) return missing ? arg : value!;
    if (missing) throw new Error(`required variable ${name} is missing a value: ${arg}`);
    return value!;
  });
}

function interpolateDoc<T>(value: T, env: Env): T {
  if (typeof value === "string") return interpolate(value, env) as T;
  if (Array.isArray(value)) return value.map((v) => interpolateDoc(v, env)) as T;
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolateDoc(v, env)])) as T;
  return value;
}

/** KEY=VALUE lines of a dotenv file (comments and blank lines skipped). */
function parseDotenv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** Every variable compose.yaml interpolates. */
const composeVariables = (text: string) =>
  new Set([...text.replace(/\$\$/g, "").matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1] ?? m[2]!));

// .env.example with its empty secrets filled, as people are told to do; distinct values so a
// mix-up between two of them shows.
const SECRETS = { POSTGRES_PASSWORD: "pgpass0test", HATCH_API_KEYS: "apikey0test", HATCH_TRAEFIK_TOKEN: "token0test", HATCH_WAKE_SECRET: "wakesecret0test" };
const dotenv = parseDotenv(ENV_EXAMPLE_TEXT);
const filledEnv: Env = { ...dotenv, ...SECRETS };

const parseCompose = (): Doc => parse(COMPOSE_TEXT, { merge: true }) as Doc;
const effective = (doc: Doc = parseCompose(), env: Env = filledEnv): Doc => interpolateDoc(doc, env);

const APP_IMAGE = "hatch-proxy:local";
const isApp = (s: any) => s?.build !== undefined || s?.image === APP_IMAGE;
const netnsOf = (doc: Doc, name: string): string => {
  const mode = doc.services[name]?.network_mode;
  return typeof mode === "string" && mode.startsWith("service:") ? mode.slice(8) : name;
};
const envOf = (service: any): Env => {
  const e = service?.environment ?? {};
  if (Array.isArray(e)) return Object.fromEntries(e.map((kv: string) => [kv.split("=")[0], kv.slice(kv.indexOf("=") + 1)]));
  return Object.fromEntries(Object.entries(e).map(([k, v]) => [k, v == null ? undefined : String(v)]));
};
const commandOf = (service: any): string[] => (Array.isArray(service?.command) ? service.command.map(String) : String(service?.command ?? "").split(/\s+/).filter(Boolean));

/** Traefik's static flags (`--a.b=c`), keys lower-cased as Traefik matches them. */
function traefikFlags(service: any): Map<string, string> {
  const flags = new Map<string, string>();
  for (const arg of commandOf(service)) {
    const m = /^--([^=]+)=(.*)$/s.exec(arg);
    if (m) flags.set(m[1]!.toLowerCase(), m[2]!);
    else if (arg.startsWith("--")) flags.set(arg.slice(2).toLowerCase(), "true");
  }
  return flags;
}

const isPrometheus = (s: any) => String(s?.image ?? "").startsWith("prom/prometheus:");
const isLoopbackHost = (h: string | undefined) => !!h && (h === "localhost" || h === "::1" || /^127\./.test(h));

interface Listener {
  service: string;
  netns: string;
  addr: ListenAddr;
}

/** What each service listens on, in which network namespace, from its config (defaults included). */
function listeners(doc: Doc): Listener[] {
  const out: Listener[] = [];
  for (const [name, s] of Object.entries(doc.services)) {
    const netns = netnsOf(doc, name);
    if (isApp(s)) {
      const command = commandOf(s)[0];
      let config: Config;
      try {
        config = loadConfig(envOf(s));
      } catch {
        continue; // reported by the config check
      }
      if (command === "api") out.push({ service: name, netns, addr: config.httpAddr });
      if (command === "wake") out.push({ service: name, netns, addr: config.wakeAddr });
      if (command === "sim") out.push({ service: name, netns, addr: config.simAddr });
    } else if (String(s.image ?? "").startsWith("postgres:")) {
      out.push({ service: name, netns, addr: { host: undefined, port: 5432 } });
    } else if (String(s.image ?? "").startsWith("traefik:")) {
      for (const [k, v] of traefikFlags(s)) {
        const m = /^entrypoints\.([^.]+)\.address$/.exec(k);
        const addr = m && parseAddr(v);
        if (addr) out.push({ service: name, netns, addr });
      }
    } else if (isPrometheus(s)) {
      out.push({ service: name, netns, addr: parseAddr(traefikFlags(s).get("web.listen-address") ?? ":9090") ?? { host: undefined, port: 9090 } });
    }
  }
  return out;
}

/** The service a URL used by `from` reaches: DNS names are services (own network) or aliases; loopback stays in `from`'s namespace. */
function reach(doc: Doc, from: string, url: string): string | undefined {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, "");
  const port = Number(u.port || (u.protocol === "https:" ? 443 : 80));
  const loop = isLoopbackHost(host);
  let netns: string | undefined;
  if (loop) netns = netnsOf(doc, from);
  else {
    for (const [name, s] of Object.entries(doc.services)) {
      if (netnsOf(doc, name) !== name) continue; // a service in another's namespace has no DNS name
      const aliases = Object.values(s.networks ?? {}).flatMap((n: any) => n?.aliases ?? []);
      if (name === host || aliases.includes(host)) netns = name;
    }
  }
  if (!netns) return undefined;
  const hit = listeners(doc).find((l) => {
    if (l.netns !== netns || l.addr.port !== port) return false;
    const wildcard = !l.addr.host || l.addr.host === "0.0.0.0" || l.addr.host === "::";
    if (wildcard) return true;
    return loop && (l.addr.host === host || (host === "localhost" && l.addr.host === "127.0.0.1"));
  });
  return hit?.service;
}

const SERVICE_ENV = /^(HATCH_|DATABASE_URL$|TRAEFIK_)/;
const isProfiled = (s: any) => Array.isArray(s?.profiles) && s.profiles.length > 0;

/**
 * Every way compose.yaml can disagree with the code; [] when it agrees. `doc` is interpolated;
 * `raw` is the parsed file before interpolation; `dotenvNames` the variables .env.example names.
 */
function checkCompose(doc: Doc, raw: Doc, composeVars: Set<string>, dotenvNames: Set<string>): string[] {
  const problems: string[] = [];
  const services = doc.services ?? {};
  const names = Object.keys(services);
  const need = (ok: unknown, problem: string) => {
    if (!ok) problems.push(problem);
  };

  // Commands and environment variables.
  for (const [name, s] of Object.entries(services)) {
    if (isApp(s)) {
      const command = commandOf(s)[0];
      need((SERVICE_COMMANDS as readonly string[]).includes(command ?? ""), `${name}: command ${JSON.stringify(command)} is not a hatch-proxy service command`);
      try {
        loadConfig(envOf(s));
      } catch (err) {
        problems.push(`${name}: environment does not parse: ${(err as Error).message}`);
      }
    }
    for (const key of Object.keys(envOf(s))) {
      if (!SERVICE_ENV.test(key)) continue;
      if (key.startsWith("TRAEFIK_") && String(s.image ?? "").startsWith("traefik:")) {
        problems.push(`${name}: ${key} is ignored: Traefik reads no environment variables when flags are given`);
      } else need(key in ENV_VARS, `${name}: ${key} is not a variable the config parser knows`);
    }
  }

  // Dependencies, health checks, namespaces, profiles.
  for (const [name, s] of Object.entries(services)) {
    for (const [target, dep] of Object.entries<any>(s.depends_on ?? {})) {
      if (!services[target]) {
        problems.push(`${name}: depends on unknown service ${target}`);
        continue;
      }
      if (dep?.condition === "service_healthy") need(services[target].healthcheck?.test, `${name}: waits for ${target} to be healthy, but ${target} has no healthcheck`);
      if (dep?.condition === "service_completed_successfully") need(services[target].restart === "no", `${name}: waits for ${target} to complete, but ${target} restarts`);
      if (isProfiled(services[target]) && !isProfiled(s)) problems.push(`${name}: depends on ${target}, which runs only in profile(s) ${services[target].profiles}`);
    }
    const mode = s.network_mode;
    if (typeof mode === "string" && mode.startsWith("service:")) {
      const owner = mode.slice(8);
      need(services[owner], `${name}: network_mode names unknown service ${owner}`);
      if (services[owner] && isProfiled(services[owner]) && !isProfiled(s)) problems.push(`${name}: shares the namespace of ${owner}, which runs only in a profile`);
      need(!s.ports, `${name}: publishes ports but lives in ${owner}'s namespace`);
    }
  }

  // Only Traefik publishes, on its public entry point.
  const traefikName = names.find((n) => String(services[n].image ?? "").startsWith("traefik:"));
  for (const [name, s] of Object.entries(services)) if (name !== traefikName) need(!s.ports?.length, `${name}: publishes ports (only traefik may)`);
  if (!traefikName) return [...problems, "no traefik service"];
  const traefik = services[traefikName];
  const flags = traefikFlags(traefik);
  need(String(raw.services[traefikName].image).startsWith("traefik:v3.6"), "traefik: image is not traefik:v3.6");

  const api = names.find((n) => isApp(services[n]) && commandOf(services[n])[0] === "api");
  const wake = names.find((n) => isApp(services[n]) && commandOf(services[n])[0] === "wake");
  const sim = names.find((n) => isApp(services[n]) && commandOf(services[n])[0] === "sim");
  const migrate = names.find((n) => isApp(services[n]) && commandOf(services[n])[0] === "migrate");
  if (!api || !wake || !migrate) return [...problems, "api, wake and migrate services are all required"];
  let apiConfig: Config;
  let wakeConfig: Config;
  try {
    apiConfig = loadConfig(envOf(services[api]));
    wakeConfig = loadConfig(envOf(services[wake]));
  } catch {
    return problems;
  }

  // The public entry point is published to all; anything else only on the host's loopback, and
  // only a port something in Traefik's namespace listens on (Prometheus' UI).
  const ports: string[] = (traefik.ports ?? []).map(String);
  const toPublic = ports.filter((p) => !p.startsWith("127.0.0.1:")).map((p) => Number(p.split(":").at(-1)));
  const entryPoint = (ep: string) => parseAddr(flags.get(`entrypoints.${ep.toLowerCase()}.address`) ?? "");
  for (const ep of apiConfig.traefikEntryPoints) need(entryPoint(ep), `traefik: has no entry point "${ep}" that the API's routers attach to`);
  const publicEp = entryPoint(apiConfig.traefikEntryPoints[0]!);
  need(toPublic.length === 1 && publicEp && toPublic[0] === publicEp.port, `traefik: publishes container port(s) ${toPublic} but its public entry point listens on ${publicEp?.port}`);
  for (const p of ports.filter((x) => x.startsWith("127.0.0.1:"))) {
    const port = Number(p.split(":").at(-1));
    const by = listeners(doc).find((l) => l.netns === traefikName && l.addr.port === port && l.service !== traefikName);
    need(by, `traefik: publishes ${p} but nothing in its namespace listens on ${port}`);
  }

  // The provider endpoint and its token.
  const endpoint = flags.get("providers.http.endpoint");
  need(endpoint === `${apiConfig.routeApiUrl}/traefik/config`, `traefik: provider endpoint ${endpoint} is not the API's HATCH_ROUTE_API_URL + /traefik/config (${apiConfig.routeApiUrl}/traefik/config)`);
  if (endpoint) need(reach(doc, traefikName, endpoint) === api, `traefik: provider endpoint ${endpoint} does not reach the api service`);
  need(reach(doc, traefikName, apiConfig.routeApiUrl) === api, `api: HATCH_ROUTE_API_URL ${apiConfig.routeApiUrl} does not reach the api from traefik`);
  const header = [...flags].find(([k]) => k === "providers.http.headers.authorization")?.[1];
  need(apiConfig.traefikToken, "api: HATCH_TRAEFIK_TOKEN is unset (Traefik is not a loopback client of the API)");
  need(header === `Bearer ${apiConfig.traefikToken}`, "traefik: the provider's Authorization header is not Bearer <the API's HATCH_TRAEFIK_TOKEN>");

  // The wake sidecar.
  need(reach(doc, traefikName, apiConfig.wakeUrl) === wake, `api: HATCH_WAKE_URL ${apiConfig.wakeUrl} does not reach the wake service from traefik`);
  need(new URL(apiConfig.wakeUrl).port === String(wakeConfig.wakeAddr.port), `api: HATCH_WAKE_URL port ${new URL(apiConfig.wakeUrl).port} is not wake's HATCH_WAKE_ADDR port ${wakeConfig.wakeAddr.port}`);
  need(apiConfig.wakeSecret && apiConfig.wakeSecret === wakeConfig.wakeSecret, "api and wake: HATCH_WAKE_SECRET differs or is unset");
  need(apiConfig.baseDomain === wakeConfig.baseDomain, "api and wake: HATCH_PROXY_BASE_DOMAIN differs");
  need(apiConfig.hatchApiUrl === wakeConfig.hatchApiUrl && apiConfig.hatchApiKey === wakeConfig.hatchApiKey, "api and wake: the VM platform (HATCH_API_URL/HATCH_API_KEY) differs");

  // Guests are reached by Traefik (running VMs) and the sidecar (woken VMs): with the simulator,
  // whose guest IPs are loopback, both must share its network namespace.
  if (sim) {
    const platformUrl = apiConfig.hatchApiUrl;
    if (platformUrl && reach(doc, api, platformUrl) === sim) {
      need(reach(doc, wake, platformUrl) === sim, `wake: HATCH_API_URL ${platformUrl} does not reach the simulator`);
      need(netnsOf(doc, sim) === netnsOf(doc, traefikName) && netnsOf(doc, wake) === netnsOf(doc, traefikName), "sim, wake and traefik must share one network namespace: the simulator's guest IPs are loopback addresses");
    } else if (platformUrl) {
      need(!/\bsim\b/.test(new URL(platformUrl).hostname), `api: HATCH_API_URL ${platformUrl} does not reach the simulator`);
    }
  }

  // Traefik's API and metrics: the api reads every Traefik there is, or idle sleep would miss the
  // traffic Traefik sends straight to running VMs.
  need(apiConfig.traefikApiUrls.length > 0, "api: HATCH_TRAEFIK_API_URLS is unset: Traefik's direct traffic would not count as activity");
  for (const u of apiConfig.traefikApiUrls) need(reach(doc, api, u) === traefikName, `api: HATCH_TRAEFIK_API_URLS entry ${u} does not reach traefik's API entry point`);
  const internal = entryPoint("traefik");
  need(flags.get("metrics.prometheus.entrypoint") === "traefik", "traefik: metrics must be served on the `traefik` entry point");
  // The API only through the file-provider router (insecure mode would publish the wake secret).
  need(flags.get("api.insecure") !== "true", "traefik: api.insecure serves every API page (the wake secret too) on the traefik entry point");
  const apiFile = flags.get("providers.file.filename");
  const mounted = (raw.services[traefikName].volumes ?? []).map(String).find((v: string) => v.startsWith("./traefik:"));
  need(apiFile && mounted && apiFile.startsWith(mounted.split(":")[1]!.replace(/\/?$/, "/")), "traefik: --providers.file.filename must name internal-api.yml in the mounted traefik/ directory");
  if (apiFile && mounted) {
    const local = join(ROOT, "traefik", apiFile.slice(mounted.split(":")[1]!.replace(/\/?$/, "/").length));
    const router = existsSync(local) ? (parse(readFileSync(local, "utf8")) as any)?.http?.routers?.["hatch-traefik-api"] : undefined;
    need(router?.service === "api@internal" && (router?.entryPoints ?? []).includes("traefik"), `traefik: ${apiFile} has no router to api@internal on the traefik entry point`);
  }
  need(internal && apiConfig.traefikApiUrls.some((u) => Number(new URL(u).port) === internal.port), "api: HATCH_TRAEFIK_API_URLS does not name traefik's `traefik` entry point port");

  // api.<base>'s VM calls: Traefik sends them to HATCH_TRAEFIK_PLATFORM_URL. The simulator checks no
  // key, so with it they must go to the api, which checks the key and relays them.
  if (sim && apiConfig.hatchApiUrl && reach(doc, api, apiConfig.hatchApiUrl) === sim) {
    const target = apiConfig.traefikPlatformUrl;
    need(target !== undefined && reach(doc, traefikName, target) === api, `api: HATCH_TRAEFIK_PLATFORM_URL ${target ?? "(unset)"} does not reach the api from traefik: VM calls on api.<base> would reach the simulator, which checks no key`);
  }

  // The database: one URL, the postgres service's credentials.
  const pg = names.find((n) => String(services[n].image ?? "").startsWith("postgres:"));
  const urls = [api, wake, migrate].map((n) => envOf(services[n]).DATABASE_URL);
  need(new Set(urls).size === 1 && urls[0], "api, wake and migrate: DATABASE_URL differs or is unset");
  if (pg && urls[0]) {
    const u = new URL(urls[0]);
    const pgEnv = envOf(services[pg]);
    need(reach(doc, api, `http://${u.hostname}:${u.port || 5432}`) === pg, `DATABASE_URL host ${u.host} is not the postgres service`);
    need(u.username === pgEnv.POSTGRES_USER && decodeURIComponent(u.password) === pgEnv.POSTGRES_PASSWORD && u.pathname === `/${pgEnv.POSTGRES_DB}`, "DATABASE_URL does not match POSTGRES_USER/PASSWORD/DB");
  }

  // Health checks that others wait on must ask the right port.
  const apiHealth = JSON.stringify(services[api].healthcheck?.test ?? "");
  need(apiHealth.includes(`http://127.0.0.1:${apiConfig.httpAddr.port}/readyz`), `api: healthcheck does not ask /readyz on the API port ${apiConfig.httpAddr.port}`);

  // No two listeners on one port of one namespace.
  const all = listeners(doc);
  for (const [i, a] of all.entries()) {
    for (const b of all.slice(i + 1)) {
      if (a.netns !== b.netns || a.addr.port !== b.addr.port) continue;
      const wild = (l: Listener) => !l.addr.host || l.addr.host === "0.0.0.0" || l.addr.host === "::";
      if (wild(a) || wild(b) || a.addr.host === b.addr.host) problems.push(`${a.service} and ${b.service} both listen on port ${a.addr.port} in ${a.netns}'s namespace`);
    }
  }

  // Traefik's files: mounted read-only, never where Traefik would load a file and drop the flags.
  const mounts: string[] = (traefik.volumes ?? []).map(String);
  need(mounts.some((m) => /^\.\/traefik:[^:]+:ro$/.test(m)), "traefik: the repo's traefik/ is not mounted read-only");
  need(!mounts.some((m) => /:\/etc\/traefik(\/|:|$)/.test(m)), "traefik: a mount at /etc/traefik makes Traefik load a file and ignore its flags");

  // Prometheus (profile `monitoring`): the repo's prometheus/ mounted read-only, its rules there,
  // and each job's target reaching the service it is named for.
  const prom = names.find((n) => isPrometheus(services[n]));
  if (prom) {
    const p = services[prom];
    need(isProfiled(p), `${prom}: runs without a profile (it is optional: profile monitoring)`);
    const mount = ((p.volumes ?? []) as string[]).map(String).find((v) => v.startsWith("./prometheus:"));
    need(mount?.endsWith(":ro"), `${prom}: the repo's prometheus/ is not mounted read-only`);
    const configFile = traefikFlags(p).get("config.file") ?? "";
    const inMount = (file: string) => (mount ? join(ROOT, "prometheus", file.slice(mount.split(":")[1]!.replace(/\/?$/, "/").length)) : "");
    const local = mount && configFile.startsWith(mount.split(":")[1]!) ? inMount(configFile) : undefined;
    need(local && existsSync(local), `${prom}: --config.file=${configFile} is not a file of the mounted prometheus/`);
    if (local && existsSync(local)) {
      const promConfig = parse(readFileSync(local, "utf8")) as { rule_files?: string[]; scrape_configs?: { job_name: string; static_configs?: { targets: string[] }[] }[] };
      for (const f of promConfig.rule_files ?? []) need(existsSync(inMount(f)), `${prom}: rule file ${f} is not in the mounted prometheus/`);
      const expected: Record<string, string | undefined> = { "hatch-proxy-api": api, "hatch-proxy-wake": wake, traefik: traefikName };
      for (const [job, service] of Object.entries(expected)) {
        const targets = promConfig.scrape_configs?.find((c) => c.job_name === job)?.static_configs?.flatMap((c) => c.targets) ?? [];
        need(targets.length > 0, `${prom}: prometheus.yml has no job ${job}`);
        for (const t of targets) need(reach(doc, prom, `http://${t}`) === service, `${prom}: job ${job}'s target ${t} does not reach the ${service} service`);
      }
    }
  }

  // Every interpolated variable is documented in .env.example, and nothing there is unused.
  for (const v of composeVars) need(dotenvNames.has(v), `.env.example does not name ${v}, which compose.yaml uses`);
  for (const v of dotenvNames) need(composeVars.has(v) || v === "COMPOSE_PROFILES", `.env.example names ${v}, which compose.yaml never uses`);
  return problems;
}

const check = (doc: Doc = effective(), raw: Doc = parseCompose(), vars = composeVariables(COMPOSE_TEXT), names = new Set(Object.keys(dotenv))) =>
  checkCompose(doc, raw, vars, names);

describe("compose.yaml agrees with the code", () => {
  it("passes every check", () => {
    expect(check()).toEqual([]);
  });

  it("has the services, images and profiles the product needs", () => {
    const doc = effective();
    expect(Object.keys(doc.services).sort()).toEqual(["api", "migrate", "postgres", "prometheus", "sim", "traefik", "wake"]);
    expect(doc.services.prometheus.profiles).toEqual(["monitoring"]);
    expect(doc.services.postgres.image).toBe("postgres:16");
    expect(doc.services.traefik.image).toBe("traefik:v3.6");
    expect(doc.services.sim.profiles).toEqual(["dev"]);
    expect(doc.services.migrate.depends_on).toEqual({ postgres: { condition: "service_healthy" } });
    expect(doc.services.api.depends_on).toEqual({ migrate: { condition: "service_completed_successfully" } });
    expect(doc.services.traefik.ports).toEqual(["9090:9090", "127.0.0.1:9095:9095"]);
    expect(dotenv.COMPOSE_PROFILES).toBe("dev");
  });

  it("refuses to start with the secrets of .env.example left empty, naming the variable", () => {
    expect(() => effective(parseCompose(), dotenv)).toThrow(/^required variable POSTGRES_PASSWORD is missing a value: set POSTGRES_PASSWORD in \.env/);
    for (const name of Object.keys(SECRETS)) expect(dotenv[name], name).toBe("");
    expect(() => effective(parseCompose(), { ...filledEnv, HATCH_WAKE_SECRET: "" })).toThrow(/HATCH_WAKE_SECRET/);
  });

  it(".env.example's fill-in command covers exactly the required secrets it leaves empty", () => {
    const loop = /^#\s+for v in ([A-Z_ ]+); do$/m.exec(ENV_EXAMPLE_TEXT);
    expect(loop).not.toBeNull();
    const required = new Set([...COMPOSE_TEXT.matchAll(/\$\{([A-Z_]+):\?/g)].map((m) => m[1]!));
    const emptyRequired = Object.entries(dotenv).filter(([k, v]) => v === "" && required.has(k)).map(([k]) => k);
    expect(loop![1]!.trim().split(/\s+/).sort()).toEqual(emptyRequired.sort());
    expect(emptyRequired.sort()).toEqual(Object.keys(SECRETS).sort());
  });

  const svc = (doc: Doc, name: string) => doc.services[name];
  const setEnv = (name: string, key: string, value: string | undefined) => (doc: Doc) => {
    svc(doc, name).environment = { ...svc(doc, name).environment, [key]: value };
  };
  const setFlag = (flag: string, value: string) => (doc: Doc) => {
    const cmd: string[] = svc(doc, "traefik").command;
    svc(doc, "traefik").command = cmd.map((a) => (a.toLowerCase().startsWith(`--${flag.toLowerCase()}=`) ? `--${flag}=${value}` : a));
  };
  const mutations: [string, (doc: Doc) => void, string][] = [
    ["an unknown command", (d) => void (svc(d, "wake").command = ["waker"]), 'wake: command "waker" is not a hatch-proxy service command'],
    ["an unknown variable", setEnv("api", "HATCH_WAKE_ADRESS", ":9091"), "api: HATCH_WAKE_ADRESS is not a variable the config parser knows"],
    ["a TRAEFIK_ variable on traefik", setEnv("traefik", "TRAEFIK_LOG_LEVEL", "DEBUG"), "traefik: TRAEFIK_LOG_LEVEL is ignored"],
    ["a value the parser refuses", setEnv("wake", "HATCH_PROXY_WAKE_TIMEOUT", "60"), "wake: environment does not parse: invalid configuration:\n  HATCH_PROXY_WAKE_TIMEOUT"],
    ["the API on another port", setEnv("api", "HATCH_HTTP_ADDR", ":8081"), "traefik: provider endpoint http://api:8080/traefik/config does not reach the api service"],
    ["a provider endpoint on another host", setFlag("providers.http.endpoint", "http://127.0.0.1:8080/traefik/config"), "is not the API's HATCH_ROUTE_API_URL + /traefik/config"],
    ["another provider token", setFlag("providers.http.headers.Authorization", "Bearer other"), "traefik: the provider's Authorization header is not Bearer <the API's HATCH_TRAEFIK_TOKEN>"],
    ["no API token", setEnv("api", "HATCH_TRAEFIK_TOKEN", undefined), "api: HATCH_TRAEFIK_TOKEN is unset"],
    ["the sidecar on another port", setEnv("wake", "HATCH_WAKE_ADDR", "127.0.0.1:9093"), "api: HATCH_WAKE_URL port 9091 is not wake's HATCH_WAKE_ADDR port 9093"],
    ["the sidecar in its own namespace", (d) => void delete svc(d, "wake").network_mode, "api: HATCH_WAKE_URL http://127.0.0.1:9091 does not reach the wake service from traefik"],
    ["another wake secret", setEnv("wake", "HATCH_WAKE_SECRET", "x"), "api and wake: HATCH_WAKE_SECRET differs or is unset"],
    ["another base domain", setEnv("wake", "HATCH_PROXY_BASE_DOMAIN", "example.com"), "api and wake: HATCH_PROXY_BASE_DOMAIN differs"],
    ["the simulator in its own namespace", (d) => void delete svc(d, "sim").network_mode, "api: HATCH_API_URL http://sim:8090 does not reach the simulator"],
    ["the simulator on loopback only", setEnv("sim", "HATCH_SIM_ADDR", "127.0.0.1:8090"), "api: HATCH_API_URL http://sim:8090 does not reach the simulator"],
    ["a second published port", (d) => void (svc(d, "api").ports = ["8080:8080"]), "api: publishes ports (only traefik may)"],
    ["no Traefik API URL on the api", setEnv("api", "HATCH_TRAEFIK_API_URLS", undefined), "api: HATCH_TRAEFIK_API_URLS is unset: Traefik's direct traffic would not count as activity"],
    ["Traefik's API on loopback only", setFlag("entryPoints.traefik.address", "127.0.0.1:9092"), "api: HATCH_TRAEFIK_API_URLS entry http://traefik:9092 does not reach traefik's API entry point"],
    ["a platform URL Traefik cannot reach", setEnv("api", "HATCH_TRAEFIK_PLATFORM_URL", "http://127.0.0.1:8091"), "api: HATCH_TRAEFIK_PLATFORM_URL http://127.0.0.1:8091 does not reach the api from traefik"],
    ["VM calls from Traefik straight to the simulator", setEnv("api", "HATCH_TRAEFIK_PLATFORM_URL", "http://127.0.0.1:8090"), "api: HATCH_TRAEFIK_PLATFORM_URL http://127.0.0.1:8090 does not reach the api from traefik: VM calls on api.<base> would reach the simulator, which checks no key"],
    ["Traefik's API in insecure mode", (d) => void svc(d, "traefik").command.push("--api.insecure=true"), "traefik: api.insecure serves every API page"],
    ["a published port that is not the entry point", (d) => void (svc(d, "traefik").ports = ["9090:9092"]), "traefik: publishes container port(s) 9092 but its public entry point listens on 9090"],
    ["routers on a missing entry point", setEnv("api", "HATCH_TRAEFIK_ENTRYPOINTS", "websecure"), 'traefik: has no entry point "websecure"'],
    ["a dependency on a missing service", (d) => void (svc(d, "api").depends_on.redis = { condition: "service_started" }), "api: depends on unknown service redis"],
    ["waiting for health without a healthcheck", (d) => void (svc(d, "migrate").depends_on.postgres = undefined, delete svc(d, "postgres").healthcheck, (svc(d, "api").depends_on.postgres = { condition: "service_healthy" })), "api: waits for postgres to be healthy, but postgres has no healthcheck"],
    ["waiting for a service that restarts", (d) => void (svc(d, "migrate").restart = "on-failure"), "api: waits for migrate to complete, but migrate restarts"],
    ["a dependency on a profile service", (d) => void (svc(d, "api").depends_on.sim = { condition: "service_started" }), "api: depends on sim, which runs only in profile(s) dev"],
    ["another database", setEnv("wake", "DATABASE_URL", "postgres://hatch:pgpass0test@postgres:5432/other"), "api, wake and migrate: DATABASE_URL differs or is unset"],
    ["a wrong database password", (d) => void (svc(d, "postgres").environment.POSTGRES_PASSWORD = "nope"), "DATABASE_URL does not match POSTGRES_USER/PASSWORD/DB"],
    ["a healthcheck on the wrong port", (d) => void (svc(d, "api").healthcheck.test = ["CMD", "node", "-e", "fetch('http://127.0.0.1:9999/readyz')"]), "api: healthcheck does not ask /readyz on the API port 8080"],
    ["two listeners on one port", setEnv("sim", "HATCH_SIM_ADDR", "0.0.0.0:9091"), "wake and sim both listen on port 9091 in traefik's namespace"],
    ["traefik/ mounted at /etc/traefik", (d) => void (svc(d, "traefik").volumes = ["./traefik:/etc/traefik:ro"]), "traefik: a mount at /etc/traefik makes Traefik load a file and ignore its flags"],
    ["traefik/ mounted writable", (d) => void (svc(d, "traefik").volumes = ["./traefik:/etc/hatch-proxy/traefik"]), "traefik: the repo's traefik/ is not mounted read-only"],
    ["Prometheus on its default port, Traefik's public one", (d) => void (svc(d, "prometheus").command = svc(d, "prometheus").command.filter((a: string) => !a.startsWith("--web.listen-address"))), "traefik and prometheus both listen on port 9090 in traefik's namespace"],
    ["Prometheus in its own namespace (the sidecar listens on Traefik's loopback)", (d) => void delete svc(d, "prometheus").network_mode, "prometheus: job hatch-proxy-wake's target 127.0.0.1:9091 does not reach the wake service"],
    ["a published UI port nothing listens on", (d) => void (svc(d, "traefik").ports = ["9090:9090", "127.0.0.1:9096:9096"]), "traefik: publishes 127.0.0.1:9096:9096 but nothing in its namespace listens on 9096"],
    ["Prometheus without its rules mounted", (d) => void (svc(d, "prometheus").volumes = ["prometheus-data:/prometheus"]), "prometheus: the repo's prometheus/ is not mounted read-only"],
  ];
  it.each(mutations)("catches %s", (_name, mutate, problem) => {
    const doc = structuredClone(effective());
    mutate(doc);
    const problems = check(doc);
    expect(problems.some((p) => p.includes(problem)), `expected a problem containing ${JSON.stringify(problem)}, got ${JSON.stringify(problems)}`).toBe(true);
  });

  it("catches a variable .env.example does not name, and one compose never uses", () => {
    const vars = composeVariables(`${COMPOSE_TEXT}\n# \${HATCH_NEW_THING}`);
    expect(check(effective(), parseCompose(), vars)).toEqual([".env.example does not name HATCH_NEW_THING, which compose.yaml uses"]);
    const names = new Set([...Object.keys(dotenv), "HATCH_OLD_THING"]);
    expect(check(effective(), parseCompose(), composeVariables(COMPOSE_TEXT), names)).toEqual([".env.example names HATCH_OLD_THING, which compose.yaml never uses"]);
  });

  it("with a real Hatch instead of the simulator, the same checks still pass", () => {
    const env = { ...filledEnv, COMPOSE_PROFILES: "", HATCH_API_URL: "https://hatch.example.com", HATCH_API_KEY: "hatchkey" };
    expect(check(effective(parseCompose(), env))).toEqual([]);
    expect(check(effective(parseCompose(), { ...filledEnv, HATCH_API_URL: "http://sim:9999" }))).toContain("api: HATCH_API_URL http://sim:9999 does not reach the simulator");
  });
});

describe("Dockerfile", () => {
  const text = read("Dockerfile");
  const ignored = read(".dockerignore").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));

  it("builds a multi-stage, non-root, production-only image whose entry point is the build", () => {
    const froms = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]);
    expect(froms.length).toBeGreaterThanOrEqual(2);
    for (const from of froms) expect(from).toBe("node:20-bookworm-slim");
    expect(text).toMatch(/^RUN npm ci --omit=dev\b/m);
    expect(text).toMatch(/^RUN npm run build$/m);
    const users = [...text.matchAll(/^USER\s+(\S+)/gm)].map((m) => m[1]);
    expect(users.at(-1)).toBe("node");
    expect(text).toMatch(/^ENTRYPOINT \["node", "dist\/main\.js"\]$/m);
    expect(text).not.toMatch(/^HEALTHCHECK/m);
    // The final stage runs the build on plain node: tsx and TypeScript are development tools.
    const deps = Object.keys(JSON.parse(read("package.json")).dependencies);
    expect(deps).not.toContain("tsx");
    expect(deps).not.toContain("typescript");
  });

  /** The COPY lines of the stage that starts at the last FROM (what the image ships). */
  const finalStage = () => text.slice(text.lastIndexOf("\nFROM "));
  const copiedIn = (stage: string) => [...stage.matchAll(/^COPY\s+(?!--from)(.+)\s+\S+$/gm)].flatMap((m) => m[1]!.trim().split(/\s+/));

  it("ships dist/ from the build stage with what the CLI reads at run time, and no sources", () => {
    const final = finalStage();
    expect(final).toMatch(/^COPY --from=build \/app\/dist \.\/dist$/m);
    for (const path of ["package.json", "package-lock.json", "bin", "drizzle", "traefik"]) {
      expect(copiedIn(final)).toContain(path);
      expect(existsSync(join(ROOT, path)), path).toBe(true);
      expect(ignored).not.toContain(path);
    }
    expect(copiedIn(final)).not.toContain("src");
    expect(final).not.toMatch(/COPY --from=build \/app\/(src|node_modules)/);
    // The build stage reads the sources and the build's own files.
    for (const path of ["src", "scripts", "tsconfig.json", "tsconfig.build.json"]) {
      expect(copiedIn(text), path).toContain(path);
      expect(ignored).not.toContain(path);
    }
    expect(ignored).toEqual(expect.arrayContaining(["node_modules", "dist", "data", ".env", ".git"]));
  });
});

describe.skipIf(!traefikBinary())("Traefik with compose.yaml's flags", () => {
  const bin = traefikBinary()!;
  const servers: Server[] = [];
  let traefik: ChildProcess | undefined;
  let dir: string;
  const polls: number[] = [];


  /** The traefik service's command, with compose's addresses moved to free loopback ports. */
  const localFlags = (doc: Doc, ports: { web: number; internal: number; api: number }) =>
    commandOf(doc.services.traefik).map((arg) =>
      arg
        .replace(/^--entryPoints\.web\.address=.*$/i, `--entryPoints.web.address=127.0.0.1:${ports.web}`)
        .replace(/^--entryPoints\.traefik\.address=.*$/i, `--entryPoints.traefik.address=127.0.0.1:${ports.internal}`)
        .replace(/^(--providers\.http\.endpoint=)http:\/\/api:8080/i, `$1http://127.0.0.1:${ports.api}`)
        .replace(/^(--providers\.file\.filename=)\/etc\/hatch-proxy\/traefik\//i, `$1${join(ROOT, "traefik")}/`),
    );

  /** GET / on a loopback port with a given Host header (node:http: fetch may not send a custom Host). */
  const getVia = (port: number, host: string) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, path: "/", headers: { host } }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode!, body }));
      });
      req.on("error", reject);
      req.end();
    });

  let ports: { web: number; internal: number; api: number };
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "hatch-compose-traefik-"));
    const doc = effective();
    const config = loadConfig(envOf(doc.services.api));

    const guest = createServer((_req, res) => res.writeHead(200, { "content-type": "text/plain" }).end("guest ok"));
    await new Promise<void>((r) => guest.listen(0, "127.0.0.1", () => r()));
    servers.push(guest);
    const built = buildDynamicConfig(
      [{ id: "rt_composecheck01", vmId: "vm_compose", subdomain: "myapp", targetPort: (guest.address() as AddressInfo).port }],
      new Map([["vm_compose", { id: "vm_compose", state: "running", guest_ip: "127.0.0.1" }]]),
      traefikSettings(config),
    );
    const snapshot = makeSnapshot(stableStringify(built), 1, Date.now());
    const service: ConfigService = {
      start: async () => {},
      stop: async () => {},
      current: () => snapshot,
      refresh: async () => {},
      health: () => ({ ready: true, lastError: undefined, lastSuccessAt: Date.now() }),
      notReadyReason: () => "",
      routersOf: () => [],
      vmOfService: () => undefined,
      routedVms: () => [],
    };
    // In compose Traefik is another container: not a loopback client, so only the token opens the endpoint.
    const app = new Hono();
    app.use(async (c, next) => {
      await next();
      polls.push(c.res.status);
    });
    app.route("/traefik", traefikEndpoint(service, { config, log: silentLogger, clientAddress: () => "172.18.0.5" }));
    const api = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }) as Server;
    await new Promise<void>((r) => (api.listening ? r() : api.once("listening", () => r())));
    servers.push(api);

    ports = { web: await freePort(), internal: await freePort(), api: (api.address() as AddressInfo).port };
    const args = localFlags(doc, ports);
    expect(args.some((a) => a.includes("api:8080"))).toBe(false);
    traefik = spawn(bin, args, { stdio: ["ignore", "ignore", "ignore"] });
  });

  afterAll(async () => {
    if (traefik && traefik.exitCode === null) {
      const exited = new Promise((r) => traefik!.once("exit", r));
      traefik.kill("SIGTERM");
      await exited;
    }
    for (const s of servers) {
      s.closeAllConnections();
      await new Promise<void>((r) => s.close(() => r()));
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it("polls the API with the token, applies the routers and serves them on the public entry point", async () => {
    await expect
      .poll(async () => (await fetch(`http://127.0.0.1:${ports.internal}/api/http/routers/rt_composecheck01@http`).catch(() => undefined))?.status, { timeout: 20_000, interval: 200 })
      .toBe(200);
    expect(polls.length).toBeGreaterThan(0);
    expect(polls.every((s) => s === 200 || s === 304)).toBe(true);
    // The API shows a router a moment before the entry point's handler is swapped in.
    await expect.poll(() => getVia(ports.web, "myapp.hatch.local"), { timeout: 10_000, interval: 100 }).toEqual({ status: 200, body: "guest ok" });
  });

  it("answers the compose healthcheck", () => {
    const test: string[] = effective().services.traefik.healthcheck.test;
    expect(test.slice(0, 2)).toEqual(["CMD", "traefik"]);
    const args = test.slice(2).map((a) => a.replace(/^(--entryPoints\.traefik\.address=).*$/i, `$1127.0.0.1:${ports.internal}`));
    expect(execFileSync(bin, args, { encoding: "utf8" })).toContain(`OK: http://127.0.0.1:${ports.internal}/ping`);
  });
});

/**
 * The compose topology without Docker: Postgres, `migrate`, `api`, `wake` and `sim` as separate
 * processes of the real CLI with compose.yaml's environment, and Traefik with its flags. Compose
 * host names and ports become free loopback ports (one host namespace here), everything else
 * (secrets, base domain, timeouts) is taken from compose.yaml as is. Then the walkthrough: a VM,
 * a route, a request through Traefik, a snapshot, and a request that wakes the VM.
 */
describe.skipIf(!traefikBinary() || !(await postgresEnabled()))("the compose topology, run natively", { timeout: 90_000 }, () => {
  const bin = traefikBinary()!;
  const cli = join(ROOT, "bin/hatch-proxy.js");
  const children: { name: string; child: ChildProcess; log: () => string }[] = [];
  const dbName = `hatch_compose_${process.pid}_${randomBytes(3).toString("hex")}`;
  const admin = postgres(ADMIN_PG_URL, { max: 1, onnotice: () => {} });
  let dir: string;
  let envs: Record<"migrate" | "api" | "wake" | "sim", Env>;
  let ports: Record<"api" | "wake" | "sim" | "web" | "internal", number>;

  const start = (name: string, command: string, args: string[], env: Env) => {
    let out = "";
    const child = spawn(command, args, { cwd: dir, env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? dir, ...env } as NodeJS.ProcessEnv, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout!.on("data", (c) => (out += c));
    child.stderr!.on("data", (c) => (out += c));
    children.push({ name, child, log: () => out });
    return child;
  };
  const logs = () => children.map((c) => `--- ${c.name} (exit ${c.child.exitCode})\n${c.log().slice(-3000)}`).join("\n");
  const getVia = (port: number, host: string, path = "/") =>
    new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
      const req = request({ host: "127.0.0.1", port, path, headers: { host } }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      });
      req.on("error", reject);
      req.end();
    });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "hatch-compose-native-"));
    await admin.unsafe(`create database ${dbName}`);
    const dbUrl = new URL(ADMIN_PG_URL);
    dbUrl.pathname = `/${dbName}`;
    ports = { api: await freePort(), wake: await freePort(), sim: await freePort(), web: await freePort(), internal: await freePort() };
    const doc = effective();
    const local = (name: "migrate" | "api" | "wake" | "sim"): Env => {
      const env = envOf(doc.services[name]);
      const moved: Env = {
        ...env,
        HATCH_LOG_LEVEL: "warn",
        HATCH_DATA_DIR: join(dir, name),
        ...(env.DATABASE_URL && { DATABASE_URL: dbUrl.toString() }),
        ...(env.HATCH_HTTP_ADDR && { HATCH_HTTP_ADDR: `127.0.0.1:${ports.api}` }),
        ...(env.HATCH_ROUTE_API_URL && { HATCH_ROUTE_API_URL: `http://127.0.0.1:${ports.api}` }),
        ...(env.HATCH_WAKE_ADDR && { HATCH_WAKE_ADDR: `127.0.0.1:${ports.wake}` }),
        ...(env.HATCH_WAKE_URL && { HATCH_WAKE_URL: `http://127.0.0.1:${ports.wake}` }),
        ...(env.HATCH_SIM_ADDR && { HATCH_SIM_ADDR: `127.0.0.1:${ports.sim}`, HATCH_SIM_IP_PREFIX: "127.0.95", HATCH_SIM_RESTORE_MS: "300" }),
        ...(env.HATCH_API_URL === "http://sim:8090" && { HATCH_API_URL: `http://127.0.0.1:${ports.sim}` }),
        ...(env.HATCH_TRAEFIK_PLATFORM_URL === "http://api:8080" && { HATCH_TRAEFIK_PLATFORM_URL: `http://127.0.0.1:${ports.api}` }),
        ...(env.HATCH_TRAEFIK_API_URLS && { HATCH_TRAEFIK_API_URLS: `http://127.0.0.1:${ports.internal}` }),
      };
      // Every compose address must have been moved: a leftover would dial a name that does not resolve here.
      for (const [k, v] of Object.entries(moved)) expect(v ?? "", `${name} ${k}`).not.toMatch(/\b(api|sim|wake|postgres|traefik):\d/);
      return moved;
    };
    envs = { migrate: local("migrate"), api: local("api"), wake: local("wake"), sim: local("sim") };

    const migrate = start("migrate", process.execPath, [cli, ...commandOf(doc.services.migrate)], envs.migrate);
    expect(await new Promise((r) => migrate.once("exit", r)), logs()).toBe(0);
    start("sim", process.execPath, [cli, ...commandOf(doc.services.sim)], envs.sim);
    start("api", process.execPath, [cli, ...commandOf(doc.services.api)], envs.api);
    start("wake", process.execPath, [cli, ...commandOf(doc.services.wake)], envs.wake);
    const flags = commandOf(doc.services.traefik).map((arg) =>
      arg
        .replace(/^--entryPoints\.web\.address=.*$/i, `--entryPoints.web.address=127.0.0.1:${ports.web}`)
        .replace(/^--entryPoints\.traefik\.address=.*$/i, `--entryPoints.traefik.address=127.0.0.1:${ports.internal}`)
        .replace(/^(--providers\.http\.endpoint=)http:\/\/api:8080/i, `$1http://127.0.0.1:${ports.api}`)
        .replace(/^(--providers\.file\.filename=)\/etc\/hatch-proxy\/traefik\//i, `$1${join(ROOT, "traefik")}/`),
    );
    start("traefik", bin, flags, {});
    // expect.poll works only inside a test: a plain poll for the start-up.
    const status = async (url: string) => (await fetch(url, { signal: AbortSignal.timeout(2000) }).catch(() => undefined))?.status;
    const waitFor = async (what: string, ok: () => Promise<boolean>, ms: number) => {
      for (const deadline = Date.now() + ms; !(await ok()); ) {
        if (Date.now() > deadline) throw new Error(`${what} not ready within ${ms} ms\n${logs()}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    };
    await waitFor("api /readyz", async () => (await status(`http://127.0.0.1:${ports.api}/readyz`)) === 200, 60_000);
    await waitFor("traefik /ping", async () => (await status(`http://127.0.0.1:${ports.internal}/ping`)) === 200, 20_000);
    await waitFor("wake", async () => (await status(`http://127.0.0.1:${ports.wake}/`)) !== undefined, 20_000);
  }, 120_000);

  afterAll(async () => {
    for (const { child } of [...children].reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    }
    await admin.unsafe(`drop database if exists ${dbName} with (force)`).catch(() => {});
    await admin.end({ timeout: 2 });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The people commands as run inside the api container (its environment: HATCH_API_URL, HATCH_API_KEYS, HATCH_HTTP_ADDR). */
  const people = async (argv: string[]) => {
    let out = "";
    let err = "";
    const code = await runPeopleCommand(argv, envs.api, { out: (s) => (out += s), err: (s) => (err += s) });
    return { code, out, err };
  };

  it("walks through: VM, route, a request through Traefik, snapshot, a request that wakes the VM", async () => {
    const created = await people(["vms", "create", "--json"]);
    expect(created.code, created.err).toBe(0);
    const vmId = JSON.parse(created.out).id as string;
    const route = await people(["routes", "create", vmId, "--port", "8080", "--subdomain", "myapp", "--json"]);
    expect(route.code, route.err).toBe(0);
    const routeId = JSON.parse(route.out).id as string;
    const host = `myapp.${filledEnv.HATCH_PROXY_BASE_DOMAIN}`;

    // Running VM: Traefik's own router for the route (after its next poll) reaches the guest.
    await expect
      .poll(async () => (await fetch(`http://127.0.0.1:${ports.internal}/api/http/routers/${routeId}@http`)).status, { timeout: 15_000, interval: 200 })
      .toBe(200);
    const direct = await getVia(ports.web, host, "/hello");
    expect(direct.status, logs()).toBe(200);
    expect(JSON.parse(direct.body)).toMatchObject({ vm_id: vmId, port: 8080, path: "/hello" });
    expect(direct.headers["server-timing"]).toBeUndefined();

    // Snapshot: once Traefik drops the router, the catch-all sends the request to the sidecar, which wakes the VM.
    expect((await people(["vms", "snapshot", vmId])).code).toBe(0);
    const snapshotAt = Date.now();
    await expect
      .poll(async () => (await fetch(`http://127.0.0.1:${ports.internal}/api/http/routers/${routeId}@http`)).status, { timeout: 15_000, interval: 200 })
      .toBe(404);
    // HATCH_VM_SYNC_INTERVAL (1s in .env.example) + one poll (1s) + the throttle (0.5s), with slack for a busy machine.
    expect(Date.now() - snapshotAt).toBeLessThan(8000);
    const woken = await getVia(ports.web, host, "/again");
    expect(woken.status, logs()).toBe(200);
    expect(JSON.parse(woken.body)).toMatchObject({ vm_id: vmId, path: "/again" });
    expect(String(woken.headers["server-timing"])).toMatch(/^wake;dur=\d+$/);
    const vm = await people(["vms", "get", vmId, "--json"]);
    expect(JSON.parse(vm.out)).toMatchObject({ state: "running", wake_count: 1 });
  });
});
