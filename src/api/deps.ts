/** What the route API is built from (its factory's argument), and what its handlers see on the context. */
import type { Context, Hono } from "hono";
import type { Registry } from "prom-client";
import type { Config } from "../config.ts";
import type { Database } from "../db/client.ts";
import type { ActivityRecorder } from "../lifecycle/activity.ts";
import type { Sleeper } from "../lifecycle/sleeper.ts";
import type { Logger } from "../log.ts";
import type { Tenancy } from "../tenancy/tenancy.ts";
import type { VmDirectory, VmPlatform } from "../vms/platform.ts";
import type { Authenticator, Principal } from "./auth.ts";

/** A named readiness probe: resolves to undefined when fine, or a short reason when not. */
export interface ReadinessCheck {
  name: string;
  check(): Promise<string | undefined>;
}

/** What the sleep endpoints need beyond the route API's own dependencies. */
export interface SleepDeps {
  sleeper: Sleeper;
  activity: ActivityRecorder;
  /** False when the VM platform cannot start a stopped VM (Hatch): a sleep by stop is refused. */
  canStart?: boolean;
}

export interface ApiDeps {
  config: Config;
  database: Database;
  platform: VmPlatform;
  directory: VmDirectory;
  auth: Authenticator;
  /**
   * Per-user mode on a key-scoped platform: keeps each route owner's key when they call, and says
   * whether a VM can be reached (absent in tests that need none of it).
   */
  tenancy?: Tenancy | undefined;
  log: Logger;
  /** Sub-apps mounted beside the route API (e.g. "/traefik" → the config endpoint). */
  mounts?: Record<string, Hono<any>>;
  /**
   * Extra metric registries merged into /metrics (e.g. this process's wake proxy). A function is
   * asked on every scrape, for proxies started after the API.
   */
  registries?: Registry[] | (() => Registry[]);
  /** Extra readiness checks for /readyz (e.g. "traefik config built"). */
  readiness?: ReadinessCheck[];
  /** How long each /readyz check may take (default READINESS_TIMEOUT_MS). */
  readinessTimeoutMs?: number;
  /** The sleep protocol: with it, POST /vms/{id}/sleep and GET /vms/{id}/activity are served. */
  sleep?: SleepDeps | undefined;
  /**
   * Relays every other Hatch API call (`/vms`, `/vms/{id}`, its snapshot, restore, metrics…) to the
   * VM platform, so one base URL serves Hatch's whole API (see platform-proxy.ts).
   */
  vmApi?: ((c: Context) => Promise<Response>) | undefined;
}

export type ApiEnv = { Variables: { principal: Principal; log: Logger; requestId: string } };

