/**
 * Who the Traefik of `npm start` is: its files, its loopback port (API pages, ping, metrics) and
 * the secrets it shares with this process. The port can move (another process took it while
 * Traefik was down); whoever reads the API URL is told.
 */
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { TRAEFIK_INTERNAL_PORT } from "./static-config.ts";
import { settleFront, TraefikFiles, type FrontSecrets } from "./traefik-files.ts";
import type { LaunchOptions } from "./traefik-launch.ts";
import { freeLoopbackPort, portIsFree, type TraefikProcess } from "./traefik-process.ts";

export interface FrontIdentityOptions {
  bin: string;
  config: Config;
  log: Logger;
  startTimeoutMs: number;
  stopTimeoutMs: number;
  /** Told the new API/metrics URL when the loopback entry point had to move to another port. */
  onApiUrl?: ((url: string) => void) | undefined;
}

export class FrontIdentity {
  readonly files: TraefikFiles;
  private port = 0;
  /** The given config with the shared secrets this start settled on (settle()). */
  private config: Config;

  constructor(private readonly opts: FrontIdentityOptions) {
    this.files = new TraefikFiles(opts.config);
    this.config = opts.config;
  }

  /** The loopback entry point; known after settle(). */
  get apiUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Settles secrets and port (see settleFront); the Traefik an earlier run left, when it is adopted. */
  async settle(): Promise<{ secrets: FrontSecrets; adopted: TraefikProcess | undefined }> {
    const settled = await settleFront(this.files, this.opts.config, this.opts.log, this.opts.stopTimeoutMs);
    this.config = { ...this.opts.config, ...settled.secrets };
    this.port = settled.port;
    return settled;
  }

  /** A fresh port for a new Traefik (an adopted one did not route with our config), written and told. */
  async renew(): Promise<void> {
    const before = this.apiUrl;
    this.port = await freeLoopbackPort(TRAEFIK_INTERNAL_PORT);
    this.files.write(this.config, this.port);
    if (this.apiUrl !== before) this.opts.onApiUrl?.(this.apiUrl);
  }

  /** True when the port is free (a failed start may have lost it to another instance starting at once). */
  portIsFree(): Promise<boolean> {
    return portIsFree(this.port);
  }

  /** Another process took the loopback port while Traefik was down: move to a free one and say so. */
  async movePortIfTaken(): Promise<void> {
    if (await portIsFree(this.port)) return;
    const previous = this.apiUrl;
    this.port = await freeLoopbackPort(0);
    this.files.write(this.config, this.port);
    this.opts.log.warn("traefik's loopback port is taken by another process; moved", { from: previous, to: this.apiUrl });
    this.opts.onApiUrl?.(this.apiUrl);
  }

  /** How to launch (or wait for) a Traefik that is this one. */
  launchOptions(): LaunchOptions {
    return {
      bin: this.opts.bin,
      configFile: this.files.config,
      logFile: this.files.log,
      apiUrl: this.apiUrl,
      wakeUrl: this.config.wakeUrl,
      routeApiUrl: this.config.routeApiUrl,
      startTimeoutMs: this.opts.startTimeoutMs,
      stopTimeoutMs: this.opts.stopTimeoutMs,
      log: this.opts.log,
    };
  }
}
