/**
 * The files of the Traefik `npm start` runs, in the data directory: its static config, the internal
 * API routes, its log, its pid and the secrets it was given (mode 600). They let the next start
 * adopt a Traefik an earlier run left routing (a crash of ours), and only when nothing differs.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { parse, stringify } from "yaml";
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { buildStaticConfig, internalApiRoutes, TRAEFIK_INTERNAL_PORT } from "./static-config.ts";
import { adopt, freeLoopbackPort, isOurTraefik, stopProcess, type TraefikProcess } from "./traefik-process.ts";

/** The secrets Traefik and this process share: the provider token and the wake secret. */
export interface FrontSecrets {
  traefikToken: string;
  wakeSecret: string;
}

export class TraefikFiles {
  readonly config: string;
  readonly internalApi: string;
  readonly log: string;
  readonly pid: string;
  readonly secrets: string;

  /** `base`: the process configuration as given (its secrets, if the operator set them). */
  constructor(private readonly base: Config) {
    const dir = resolve(base.dataDir);
    this.config = resolve(dir, "traefik.yml");
    this.internalApi = resolve(dir, "traefik-internal-api.yml");
    this.log = resolve(dir, "traefik.log");
    this.pid = resolve(dir, "traefik.pid");
    this.secrets = resolve(dir, "traefik-secrets.json");
  }

  /** Writes the static config for a Traefik on loopback `port` with `config`'s secrets, and the secrets for a next start. */
  write(config: Config, port: number): void {
    writeFileSync(this.internalApi, stringify(internalApiRoutes()), { mode: 0o600 });
    // The file holds the provider token when one is set.
    writeFileSync(this.config, this.staticConfigText(config, port), { mode: 0o600 });
    // For the next start, to adopt this Traefik if we crash: what it must serve it to keep it.
    const secrets = { traefik_token: config.traefikToken, wake_secret: config.wakeSecret };
    writeFileSync(this.secrets, `${JSON.stringify(secrets)}\n`, { mode: 0o600 });
  }

  /** The static config a Traefik on `port` is started with, given `config`'s secrets. */
  private staticConfigText(config: Config, port: number): string {
    // Traefik gets 2 s of its own grace on stop (then our SIGKILL at 3 s), within npm start's 5 s.
    return stringify(buildStaticConfig(config, { apiPort: port, internalApiFile: this.internalApi, graceTimeOut: "2s" }));
  }

  /** Records the running Traefik's pid (what a next start looks for). */
  writePid(pid: number): void {
    writeFileSync(this.pid, `${pid}\n`);
  }

  /** The running Traefik is gone: nothing for a next start to look for. */
  forgetPid(): void {
    rmSync(this.pid, { force: true });
  }

  /** No Traefik of ours runs any more: nothing for a next start to adopt, no secret left on disk. */
  forget(): void {
    rmSync(this.pid, { force: true });
    rmSync(this.secrets, { force: true });
  }

  /** The pid of a Traefik an earlier run started from our static config and did not stop (a crash). */
  leftoverPid(): number | undefined {
    let pid: number;
    try {
      pid = Number(readFileSync(this.pid, "utf8").trim());
    } catch {
      return undefined;
    }
    rmSync(this.pid, { force: true });
    return Number.isInteger(pid) && pid > 0 && isOurTraefik(pid, this.config) ? pid : undefined;
  }

  /**
   * The port and secrets to keep a leftover Traefik with: its static config must be byte for byte
   * the one this start writes with them (same public address, provider endpoint, entry points), and
   * secrets the operator set must be the ones it was given.
   */
  adoptable(): { port: number; secrets: FrontSecrets } | undefined {
    try {
      const kept = JSON.parse(readFileSync(this.secrets, "utf8")) as { traefik_token?: unknown; wake_secret?: unknown };
      if (typeof kept.traefik_token !== "string" || typeof kept.wake_secret !== "string") return undefined;
      const secrets = { traefikToken: kept.traefik_token, wakeSecret: kept.wake_secret };
      const { traefikToken, wakeSecret } = this.base;
      if ((traefikToken && traefikToken !== secrets.traefikToken) || (wakeSecret && wakeSecret !== secrets.wakeSecret)) return undefined;
      const text = readFileSync(this.config, "utf8");
      const address = String((parse(text) as { entryPoints?: { traefik?: { address?: unknown } } })?.entryPoints?.traefik?.address ?? "");
      const port = Number(/^127\.0\.0\.1:(\d+)$/.exec(address)?.[1]);
      if (!Number.isInteger(port) || port <= 0 || text !== this.staticConfigText({ ...this.base, ...secrets }, port)) return undefined;
      return { port, secrets };
    } catch {
      return undefined;
    }
  }
}

/**
 * Settles the shared secrets and the loopback port before anything listens. A Traefik an earlier
 * run left behind (a crash of ours leaves it routing) is adopted when its static config is the one
 * this start would write with the secrets it was given: it keeps routing throughout. Otherwise it is
 * replaced (SIGTERM, then SIGKILL), and the config's secrets (or fresh ones) are written for a new one.
 */
export async function settleFront(
  files: TraefikFiles,
  config: Config,
  log: Logger,
  stopTimeoutMs: number,
): Promise<{ port: number; secrets: FrontSecrets; adopted: TraefikProcess | undefined }> {
  mkdirSync(config.dataDir, { recursive: true });
  const leftover = files.leftoverPid();
  if (leftover !== undefined) {
    const kept = files.adoptable();
    if (kept) {
      files.writePid(leftover);
      log.info("adopting the Traefik an earlier hatch-proxy left running", { pid: leftover, api: `http://127.0.0.1:${kept.port}` });
      return { ...kept, adopted: adopt(leftover) };
    }
    log.warn("replacing the Traefik an earlier hatch-proxy left running (its static config differs from this start's)", { pid: leftover });
    await stopProcess(adopt(leftover), stopTimeoutMs);
  }
  const secrets: FrontSecrets = {
    traefikToken: config.traefikToken ?? randomBytes(24).toString("base64url"),
    wakeSecret: config.wakeSecret ?? randomBytes(24).toString("base64url"),
  };
  const port = await freeLoopbackPort(TRAEFIK_INTERNAL_PORT);
  files.write({ ...config, ...secrets }, port);
  return { port, secrets, adopted: undefined };
}
