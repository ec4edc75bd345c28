/**
 * Assembles the processes from their parts: database, VM platform, VM directory, Traefik config
 * service, route API, wake sidecar. `main.ts` and the end-to-end tests both start the product here.
 */
import { createApp } from "./api/app.ts";
import { platformProxy } from "./api/platform-proxy.ts";
import type { ReadinessCheck } from "./api/deps.ts";
import { configureAuth, type VerifyAuthenticator } from "./api/auth.ts";
import { addrToUrl, type Config } from "./config.ts";
import { listenHono, type Listening } from "./listen.ts";
import { recordApiUrl } from "./running-api.ts";
import { openConfiguredDatabase, type Database } from "./db/client.ts";
import type { Logger } from "./log.ts";
import { createConfigService, type ConfigService } from "./traefik/config-service.ts";
import { quietTraefikPolls, traefikEndpoint } from "./traefik/endpoint.ts";
import { createVmDirectory } from "./vms/directory.ts";
import { createHatchClient } from "./vms/hatch-client.ts";
import type { VmDirectory, VmPlatform } from "./vms/platform.ts";
import type { Simulator } from "./vms/simulator/index.ts";
import { serveSimulator } from "./vms/simulator/serve.ts";
import { createWakeProxy, startWakeServer, type WakeProxy } from "./wake/proxy.ts";
import { OwnerKeys } from "./tenancy/owner-keys.ts";
import { Tenancy } from "./tenancy/tenancy.ts";
import { TenantPlatform } from "./tenancy/tenant-platform.ts";
import { CredentialVault } from "./tenancy/vault.ts";
import { createLifecycleRuntime, type LifecycleRuntime } from "./lifecycle/runtime.ts";
import { Sleeper, type SleeperOptions } from "./lifecycle/sleeper.ts";
import { FrontActivity } from "./lifecycle/front-activity.ts";
import { IdleSweeper } from "./lifecycle/sweeper.ts";
import { TraefikFronts } from "./traefik/fronts.ts";

export interface StackParts {
  /** Route API + Traefik config endpoint on HATCH_HTTP_ADDR. */
  api?: boolean;
  /** Wake sidecar on HATCH_WAKE_ADDR. */
  wake?: boolean;
  /** The wake handler serving HATCH_PROXY_ADDR itself (no Traefik in front). */
  embeddedProxy?: boolean;
  /**
   * Run the simulator in this process (when HATCH_API_URL is unset) and serve its API on
   * HATCH_SIM_ADDR. Without it and without HATCH_API_URL, the platform is the simulator at HATCH_SIM_ADDR.
   */
  simulator?: boolean;
  /** The caller holds HATCH_DATA_DIR's lock already (`npm start`, before its Traefik files). */
  dataDirLocked?: boolean;
  /** Timing of the sleep protocol (tests shorten the settle window). */
  sleeperOptions?: SleeperOptions;
  /** Extra /readyz checks of the API (`npm start`: the Traefik it runs in front). */
  readiness?: ReadinessCheck[];
}

export interface Stack {
  config: Config;
  database: Database;
  platform: VmPlatform;
  /** Keys kept for route owners, and the VM calls made with them (see src/tenancy). */
  tenancy: Tenancy;
  directory: VmDirectory;
  simulator?: Simulator;
  /** The lifecycle pieces the proxies and the API of this process share. */
  runtime: LifecycleRuntime;
  configService?: ConfigService;
  /** The Traefik instances read for activity and sleep confirmation (API processes). */
  fronts?: TraefikFronts;
  sleeper?: Sleeper;
  sweeper?: IdleSweeper;
  wakeProxy?: WakeProxy;
  embeddedProxy?: WakeProxy;
  api?: Listening;
  wake?: Listening;
  proxy?: Listening;
  simApi?: Listening;
  generatedKey?: string;
  keyFile?: string;
  log: Logger;
  /** Registers a shutdown step; steps run in reverse order of registration. */
  defer(step: () => Promise<void>): void;
  /**
   * Stops everything in order: listeners (finishing in-flight requests), timers, database. From the
   * moment it is called, /readyz answers 503.
   */
  close(): Promise<void>;
}

/** Starts the requested parts sharing one database handle, platform and VM directory. */
export async function startStack(config: Config, log: Logger, parts: StackParts): Promise<Stack> {
  const closers: (() => Promise<void>)[] = [];
  // Load balancers must stop sending work before the listeners go, not after.
  let closing = false;
  const close = async () => {
    closing = true;
    for (const c of closers.reverse()) await c().catch((err) => log.warn("shutdown step failed", { error: err }));
    closers.length = 0;
  };
  try {
    let simulator: Simulator | undefined;
    let base: VmPlatform;
    let simApi: Listening | undefined;
    // Bound once the directory exists: an in-process simulator tells it of every state change.
    let onSimulatorChange = () => {};
    if (config.hatchApiUrl) {
      base = createHatchClient({ baseUrl: config.hatchApiUrl, apiKey: config.hatchApiKey, timeoutMs: config.platformTimeoutMs });
    } else if (parts.simulator) {
      const served = await serveSimulator(config, log.child({ component: "simulator" }), { locked: parts.dataDirLocked, onChange: () => onSimulatorChange() });
      closers.push(() => served.close());
      simulator = served.simulator;
      base = simulator.platformAs(config.hatchApiKey);
      simApi = served.api;
    } else {
      base = createHatchClient({ baseUrl: addrToUrl(config.simAddr), apiKey: config.hatchApiKey, timeoutMs: config.platformTimeoutMs });
    }

    const database = await openConfiguredDatabase(config);
    closers.push(() => database.close());
    const tenancyLog = log.child({ component: "tenancy" });
    const keys = new OwnerKeys({ database, vault: config.credentialsKey ? new CredentialVault(config.credentialsKey) : undefined, log: tenancyLog });
    const platform = new TenantPlatform({ base, keys, database, perUser: Boolean(config.authVerifyUrl), hasServiceKey: Boolean(config.hatchApiKey), log: tenancyLog });
    const tenancy = new Tenancy(keys, platform, database, tenancyLog);

    const directory = createVmDirectory({
      platform,
      intervalMs: config.vmSyncIntervalMs,
      log: log.child({ component: "vm-directory" }),
      // Hatch deletes a VM's routes with the VM; the directory calls this only on a definite 404, and
      // only the routes whose owner's own key says 404 again now go.
      onVmGone: async (vmId) => {
        const n = await platform.deleteRoutesOfGoneVm(vmId);
        if (n) log.info("routes of a deleted VM removed", { vm_id: vmId, routes: n });
      },
    });
    await directory.refreshAll().catch((err) => log.warn("first VM sync failed; will retry", { error: err }));
    directory.start();
    if (simulator) onSimulatorChange = () => void directory.refreshAll().catch(() => {});
    closers.push(async () => directory.stop());

    const runtime = createLifecycleRuntime({ config, database, platform, directory, log: log.child({ component: "lifecycle" }) });
    await runtime.start();
    closers.push(() => runtime.stop());

    const stack: Stack = { config, database, platform, tenancy, directory, runtime, log, close, defer: (step) => void closers.push(step) };
    if (simulator) stack.simulator = simulator;
    if (simApi) stack.simApi = simApi;

    const wakeDeps = { config, database, platform, directory, lifecycle: runtime.lifecycle, log: log.child({ component: "wake" }) };
    if (parts.wake) {
      const wakeProxy = createWakeProxy(wakeDeps, { embedded: false });
      stack.wakeProxy = wakeProxy;
      closers.push(() => wakeProxy.close());
      stack.wake = await startWakeServer(wakeProxy, config.wakeAddr);
      closers.push(() => stack.wake!.close());
    }
    if (parts.embeddedProxy) await addEmbeddedProxy(stack);

    if (parts.api) {
      // A stopped VM must be startable again, or stopping it puts it to sleep for good.
      const canStart = await platform.canStart().catch(() => undefined);
      if (canStart === false && config.idleAction === "stop" && config.idleTimeoutMs > 0) {
        throw new Error("HATCH_IDLE_ACTION=stop, but the VM platform cannot start a stopped VM (Hatch has no start call): an idle VM would never wake again; use HATCH_IDLE_ACTION=snapshot");
      }
      if (canStart === undefined && config.idleAction === "stop") log.warn("cannot tell whether the VM platform can start a stopped VM (it did not answer); HATCH_IDLE_ACTION=stop is taken as it is");
      const configService = createConfigService({ database, directory, config, sleeps: runtime.sleeps, log: log.child({ component: "traefik-config" }) });
      await configService.start();
      closers.push(() => configService.stop());
      stack.configService = configService;
      const sleepLog = log.child({ component: "sleep" });
      const fronts = new TraefikFronts({ urls: config.traefikApiUrls, timeoutMs: 2000, log: sleepLog });
      let polledAt: number | undefined;
      const sleeper = new Sleeper(
        { config, database, platform, directory, activity: runtime.activity, fronts, log: sleepLog, polledAt: () => polledAt },
        parts.sleeperOptions,
      );
      const front = new FrontActivity({
        fronts,
        directory,
        activity: runtime.activity,
        sleeps: runtime.sleeps,
        vmOfService: (s) => configService.vmOfService(s),
        routedVms: () => configService.routedVms(),
        intervalMs: Math.min(config.idleCheckIntervalMs, 5000),
        log: sleepLog,
      });
      front.start();
      closers.push(async () => front.stop());
      const sweeper = new IdleSweeper({ config, database, directory, activity: runtime.activity, sleeps: runtime.sleeps, sleeper, front, log: sleepLog });
      sweeper.start();
      closers.push(() => sweeper.stop());
      Object.assign(stack, { fronts, sleeper, sweeper });
      const { auth, generatedKey, keyFile } = configureAuth(config);
      if (generatedKey) Object.assign(stack, { generatedKey, keyFile });
      const app = createApp({
        config,
        database,
        platform,
        tenancy,
        directory,
        auth,
        log: quietTraefikPolls(log.child({ component: "api" })),
        mounts: { "/traefik": traefikEndpoint(configService, { config, log, onPoll: () => (polledAt = Date.now()) }) },
        // Metrics of this process's proxy: the sidecar, or the embedded proxy (which `start` may add
        // after the API, when Traefik is missing or fails). One of them runs, never both.
        registries: () => [...[stack.wakeProxy ?? stack.embeddedProxy].flatMap((p) => (p ? [p.registry] : [])), sleeper.registry],
        sleep: { sleeper, activity: runtime.activity, canStart: canStart !== false },
        vmApi: platformProxy({ config, directory, log: log.child({ component: "vm-api" }), baseUrl: simApi?.url }),
        readiness: [
          {
            name: "traefik_config",
            check: async () => (configService.current() ? undefined : configService.notReadyReason()),
          },
          { name: "shutdown", check: async () => (closing ? "shutting down" : undefined) },
          // Every uncached key gets a 503 while the verifier is away: not ready, and say which.
          ...("readiness" in auth ? [{ name: "auth_verifier", check: () => (auth as VerifyAuthenticator).readiness() }] : []),
          ...(parts.readiness ?? []),
        ],
      });
      stack.api = await listenHono(app.fetch, config.httpAddr);
      closers.push(() => stack.api!.close());
      // The embedded database is this process's alone: import-hatch finds the API here instead.
      if (!config.databaseUrl) {
        const forget = recordApiUrl(config.dataDir, stack.api.url);
        closers.push(async () => forget());
      }
      // First at shutdown: drains under way are cancelled rather than waited out.
      closers.push(async () => sleeper.close());
    }
    return stack;
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * Serves HATCH_PROXY_ADDR with the wake handler itself (no Traefik in front): what `npm start` runs
 * when no Traefik binary is found, or when the one found fails to start.
 */
export async function addEmbeddedProxy(stack: Stack): Promise<Listening> {
  const { config, database, platform, directory } = stack;
  const proxy = createWakeProxy({ config, database, platform, directory, lifecycle: stack.runtime.lifecycle, log: stack.log.child({ component: "proxy" }) }, { embedded: true });
  stack.embeddedProxy = proxy;
  stack.defer(() => proxy.close());
  const listening = await startWakeServer(proxy, config.proxyAddr);
  stack.proxy = listening;
  stack.defer(() => listening.close());
  return listening;
}
