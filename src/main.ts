/**
 * The one entry point: `hatch-proxy <command>`. Reads the environment once, starts the requested
 * processes, and stops them cleanly on SIGINT/SIGTERM within 5 s (a second signal forces exit).
 */
import { join } from "node:path";
import { addrToUrl, ConfigError, loadConfig, type Config } from "./config.ts";
import { createLogger, type Logger } from "./log.ts";
import { openConfiguredDatabase } from "./db/client.ts";
import { lockDirectory } from "./db/data-dir-lock.ts";
import { addEmbeddedProxy, startStack, type Stack } from "./stack.ts";
import { describeDatabase } from "./db/client.ts";
import { findTraefikBinary } from "./traefik/binary.ts";
import { serveSimulator } from "./vms/simulator/serve.ts";
import { getRouteBySubdomain } from "./db/routes.repo.ts";
import { TraefikSupervisor } from "./traefik/supervisor.ts";
import { printTraefikConfig } from "./traefik/print-config.ts";
import { PEOPLE_COMMANDS, PEOPLE_USAGE, runPeopleCommand } from "./cli/people.ts";
import { SERVICE_COMMANDS } from "./cli/commands.ts";
import { runImportHatch } from "./cli/import-hatch.ts";

const VERSION = "0.1.0";

const USAGE = `hatch-proxy ${VERSION}: subdomain routing and wake-on-request for Hatch microVMs

Usage: hatch-proxy <command> [options]

Services (configured by environment variables; see README.md):
  start            everything on embedded defaults: route API, VM simulator, wake sidecar,
                   and the public proxy on HATCH_PROXY_ADDR (Traefik when found, else embedded)
  api              the route API and the Traefik config endpoint (HATCH_HTTP_ADDR)
  wake             the wake sidecar (HATCH_WAKE_ADDR)
  sim              the VM simulator alone (HATCH_SIM_ADDR)
  migrate          apply database migrations and exit
  traefik-config   print the Traefik dynamic configuration [--yaml]
  import-hatch     copy a Hatch installation's routes here: --from <postgres url> [--dry-run] [--json]

${PEOPLE_USAGE}`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(USAGE + "\n");
    return command ? 0 : 2;
  }
  if (command === "--version" || command === "version") {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if ((PEOPLE_COMMANDS as readonly string[]).includes(command)) {
    return runPeopleCommand([command, ...rest], process.env, { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) });
  }
  if (!(SERVICE_COMMANDS as readonly string[]).includes(command)) {
    process.stderr.write(`hatch-proxy: unknown command "${command}"\n\n${USAGE}\n`);
    return 2;
  }

  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`hatch-proxy: ${err.message}\n`);
      return 78; // EX_CONFIG
    }
    throw err;
  }
  const log = createLogger(config.logLevel === "silent" ? "silent" : config.logLevel, { service: `hatch-proxy-${command}` });

  switch (command) {
    case "migrate": {
      const db = await openConfiguredDatabase(config);
      await db.close();
      log.info("migrations applied", { database: describeDatabase(config) });
      return 0;
    }
    case "import-hatch":
      return runImportHatch(rest, () => openConfiguredDatabase(config), { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) });
    case "traefik-config":
      await printTraefikConfig(config, rest.includes("--yaml") ? "yaml" : "json");
      return 0;
    case "sim":
      return runUntilSignal(log, async () => {
        const served = await serveSimulator(config, log);
        log.info("VM simulator listening", { url: served.api.url, vms: served.simulator.listVms().length });
        return () => served.close();
      });
    case "api":
    case "wake":
      return runUntilSignal(log, async () => {
        const stack = await startStack(config, log, command === "api" ? { api: true } : { wake: true });
        log.info(`${command} listening`, {
          url: (command === "api" ? stack.api : stack.wake)!.url,
          database: describeDatabase(config),
          vm_platform: config.hatchApiUrl ?? `simulator at ${addrToUrl(config.simAddr)}`,
        });
        if (command === "api" && !config.traefikToken) log.warn("HATCH_TRAEFIK_TOKEN is unset: /traefik/config answers loopback clients only");
        if (stack.generatedKey) process.stderr.write(`API key (generated, kept in ${stack.keyFile}): ${stack.generatedKey}\n`);
        return () => stack.close();
      });
    case "start":
      return runUntilSignal(log, (atForcedExit) => startEverything(config, log, atForcedExit));
  }
  return 2;
}

/** `npm start`: every part in one process, Traefik as a supervised child when a binary is found. */
async function startEverything(config: Config, log: Logger, atForcedExit: AtForcedExit): Promise<Running> {
  if (!config.hatchApiUrl) {
    // Simulated VMs listen on 127.0.1.N:<guest port>; a wildcard listener on the same port (":8080")
    // would take that port on every loopback address, so the embedded product binds 127.0.0.1.
    const local = (a: Config["httpAddr"]) => (a.host ? a : { ...a, host: "127.0.0.1" });
    config = { ...config, httpAddr: local(config.httpAddr), proxyAddr: local(config.proxyAddr), wakeAddr: local(config.wakeAddr) };
  }
  // Before anything in the data directory is read or touched (simulator.json, the Traefik files and
  // the Traefik they name): a second start on a directory in use stops here, harming nothing.
  const releaseDir = lockDirectory(config.dataDir, `the data directory ${config.dataDir}`);
  try {
    return await startEverythingLocked(config, log, releaseDir, atForcedExit);
  } catch (err) {
    releaseDir();
    throw err;
  }
}

async function startEverythingLocked(config: Config, log: Logger, releaseDir: () => void, atForcedExit: AtForcedExit): Promise<Running> {
  const traefikBin = config.proxyFront === "embedded" ? undefined : findTraefikBinary(config);
  if (!traefikBin && config.proxyFront === "traefik") {
    throw new Error(`HATCH_PROXY_FRONT=traefik but no Traefik binary was found${config.traefikBin ? ` (TRAEFIK_BIN=${config.traefikBin} is not executable)` : " (set TRAEFIK_BIN, put traefik on PATH, or run `bash scripts/traefik.sh`)"}`);
  }
  // Traefik, the sidecar and the API are all ours here, so they share a wake secret and a provider
  // token that keeps the config (which carries that secret) from other local users: without one,
  // /traefik/config answers any loopback client. The supervisor settles them (fresh, or those of the
  // Traefik an earlier run left routing); they stay in memory and in mode-600 files of the data directory.
  const tokenFile = traefikBin && !config.traefikToken ? join(config.dataDir, "traefik.yml") : undefined;
  let traefik: TraefikSupervisor | undefined;
  // The fronts are built with the stack; our Traefik may move its port or fail to start later.
  const otherFronts = config.traefikApiUrls;
  let stack: Stack | undefined;
  if (traefikBin) {
    traefik = new TraefikSupervisor({
      bin: traefikBin,
      config,
      log: log.child({ component: "traefik" }),
      onApiUrl: (url) => stack?.fronts?.setUrls([...otherFronts, url]),
    });
    const t = traefik;
    atForcedExit(() => t.kill());
    // Our own Traefik's direct traffic is activity, and sleeps wait until it has dropped a VM's routers.
    const { apiUrl, secrets } = await traefik.prepare();
    config = { ...config, ...secrets, traefikApiUrls: [...otherFronts, apiUrl] };
  }
  let frontCheck: () => Promise<string | undefined> = async () => (traefik ? traefik.notReadyReason() : undefined);
  stack = await startStack(config, log, {
    api: true,
    simulator: true,
    dataDirLocked: true,
    wake: Boolean(traefik),
    readiness: [{ name: "front", check: () => frontCheck() }],
  });
  let front =
    config.proxyFront === "embedded"
      ? "embedded proxy (HATCH_PROXY_FRONT=embedded)"
      : "embedded proxy (no Traefik binary found: set TRAEFIK_BIN or run `bash scripts/traefik.sh`)";
  if (traefik) {
    try {
      await traefik.start();
      front = `Traefik (${traefikBin})`;
      const t = traefik;
      stack.defer(() => t.stop());
    } catch (err) {
      await traefik.stop();
      traefik = undefined;
      if (config.proxyFront === "traefik") {
        await stack.close();
        throw err;
      }
      log.warn("Traefik did not start; serving the proxy port with the embedded proxy", { error: err });
      front = `embedded proxy (Traefik failed to start: ${(err as Error).message})`;
    }
  }
  if (!traefik) {
    // Nothing routes around the proxy: no Traefik to read or to wait for.
    stack.fronts?.setUrls(otherFronts);
    frontCheck = async () => undefined;
    await addEmbeddedProxy(stack);
  }
  await printBanner(stack, config, front, traefik?.apiUrl, traefik ? tokenFile : undefined);
  const s = stack;
  // Released last, once the simulator has saved its state and Traefik is gone.
  return async () => {
    await s.close();
    releaseDir();
  };
}

/** The first of myapp, myapp2, myapp3… that no route has yet: the banner's example must work on a restart too. */
async function freeExampleSubdomain(stack: Stack): Promise<string> {
  for (let n = 1; n < 100; n++) {
    const name = n === 1 ? "myapp" : `myapp${n}`;
    if (!(await getRouteBySubdomain(stack.database, name).catch(() => undefined))) return name;
  }
  return "myapp-new";
}

async function printBanner(stack: Stack, config: Config, front: string, traefikApi?: string, tokenFile?: string): Promise<void> {
  const proxyPort = config.proxyAddr.port;
  const api = stack.api!.url;
  const sim = stack.simApi?.url ?? config.hatchApiUrl ?? "";
  const key = stack.generatedKey ?? "<your API key>";
  const sub = await freeExampleSubdomain(stack);
  const lines = [
    "",
    `hatch-proxy ${VERSION} is running`,
    `  proxy       http://<subdomain>.${config.baseDomain}:${proxyPort}  via ${front}`,
    ...(traefikApi ? [`  traefik     ping, metrics and router pages at ${traefikApi} (log: ${join(config.dataDir, "traefik.log")})`] : []),
    `  route API   ${api}  (OpenAPI: ${api}/openapi.json, Traefik config: ${api}/traefik/config${tokenFile ? `, its bearer token in ${tokenFile}` : ""})`,
    ...(stack.wake ? [`  wake        ${stack.wake.url}`] : []),
    `  database    ${describeDatabase(config)}`,
    `  VMs         ${stack.simulator ? `built-in simulator, API at ${sim}` : `Hatch at ${config.hatchApiUrl}`}`,
    stack.generatedKey ? `  API key     ${stack.generatedKey}  (generated once, kept in ${stack.keyFile})` : `  API key     from ${config.apiKeys ? "HATCH_API_KEYS" : "HATCH_BETTER_AUTH_VERIFY_URL"}`,
    "",
    "Try it:",
    ...(stack.simulator ? [`  curl -s -X POST ${sim}/vms                    # a VM; note its "id"`] : []),
    `  curl -s -H 'Authorization: Bearer ${key}' -d '{"subdomain":"${sub}","target_port":8080}' ${api}/vms/<id>/routes`,
    `  curl -s -H 'Host: ${sub}.${config.baseDomain}' http://127.0.0.1:${proxyPort}/`,
    "",
  ];
  process.stderr.write(lines.join("\n") + "\n");
}

/** What a service command leaves running: its graceful stop. */
type Running = () => Promise<void>;

/**
 * Registers a synchronous last resort that ends a child process which must not outlive a forced
 * exit (our Traefik). Registered as soon as the child can exist, so a forced exit in the middle of
 * the start does not leave it behind either.
 */
type AtForcedExit = (kill: () => void) => void;

/** The longest a shutdown may take; past it the process exits anyway (and says so). */
const SHUTDOWN_BUDGET_MS = 5000;

/**
 * Starts with `start`, then waits for SIGINT/SIGTERM and stops within SHUTDOWN_BUDGET_MS; a second
 * signal exits at once. The handlers are in place before the start: a signal that comes while it
 * runs (or the moment the banner is out) stops what was started once the start is done, instead of
 * killing the process with nothing stopped.
 */
async function runUntilSignal(log: Logger, start: (atForcedExit: AtForcedExit) => Promise<Running>): Promise<number> {
  let running: Running | undefined;
  const lastResorts: (() => void)[] = [];
  let pending: NodeJS.Signals | undefined;
  let stopping = false;
  let finish: (code: number) => void = () => {};
  const finished = new Promise<number>((resolve) => (finish = resolve));
  const forceExit = (code: number) => {
    for (const kill of lastResorts) kill();
    process.exit(code);
  };
  const stop = (r: Running, signal: NodeJS.Signals) => {
    const overdue = setTimeout(() => {
      log.error("shutdown did not finish in time: exiting now", { budget_ms: SHUTDOWN_BUDGET_MS });
      forceExit(1);
    }, SHUTDOWN_BUDGET_MS);
    overdue.unref();
    const began = Date.now();
    r().then(
      () => {
        clearTimeout(overdue);
        log.info("stopped", { ms: Date.now() - began, signal });
        finish(0);
      },
      (err) => {
        clearTimeout(overdue);
        log.error("shutdown failed", { error: err });
        finish(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn("second signal: exiting now", { signal });
      forceExit(130);
    }
    stopping = true;
    log.info("stopping: closing connections; requests in flight get a moment to finish", { signal, budget_ms: SHUTDOWN_BUDGET_MS, ...(!running && { after_start: true }) });
    if (running) stop(running, signal);
    else pending = signal;
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  running = await start((kill) => lastResorts.push(kill));
  if (pending) stop(running, pending);
  return finished;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`hatch-proxy: ${(err as Error)?.message ?? String(err)}\n`);
    process.exit(1);
  },
);
