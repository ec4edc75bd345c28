/**
 * The one entry point: `hatch-proxy <command>`. Reads the environment once, starts the requested
 * processes, and stops them cleanly on SIGINT/SIGTERM within 5 s (a second signal forces exit).
 *
 * Every command's code is imported when that command runs, not before: `help` and the people
 * commands then start without loading the HTTP framework, the database drivers or PGlite.
 */
import { PEOPLE_COMMANDS, SERVICE_COMMANDS } from "./cli/commands.ts";
import { VERSION } from "./version.ts";

const SERVICES_USAGE = `hatch-proxy ${VERSION}: subdomain routing and wake-on-request for Hatch microVMs

Usage: hatch-proxy <command> [options]

Services (configured by environment variables; see README.md):
  start            everything on embedded defaults: route API, VM simulator, wake sidecar,
                   and the public proxy on HATCH_PROXY_ADDR (Traefik when found, else embedded)
  api              the route API and the Traefik config endpoint (HATCH_HTTP_ADDR)
  wake             the wake sidecar (HATCH_WAKE_ADDR)
  sim              the VM simulator alone (HATCH_SIM_ADDR)
  migrate          apply database migrations and exit
  traefik-config   print the Traefik dynamic configuration [--yaml]
  import-hatch     copy a Hatch installation's routes here: --from <postgres url> [--dry-run] [--json]`;

async function usage(): Promise<string> {
  const { PEOPLE_USAGE } = await import("./cli/people.ts");
  return `${SERVICES_USAGE}\n\n${PEOPLE_USAGE}`;
}

const io = { out: (s: string) => void process.stdout.write(s), err: (s: string) => void process.stderr.write(s) };

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write((await usage()) + "\n");
    return command ? 0 : 2;
  }
  if (command === "--version" || command === "version") {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if ((PEOPLE_COMMANDS as readonly string[]).includes(command)) {
    const { runPeopleCommand } = await import("./cli/people.ts");
    return runPeopleCommand([command, ...rest], process.env, io);
  }
  if (!(SERVICE_COMMANDS as readonly string[]).includes(command)) {
    process.stderr.write(`hatch-proxy: unknown command "${command}"\n\n${await usage()}\n`);
    return 2;
  }

  const { ConfigError, loadConfig, addrToUrl } = await import("./config.ts");
  let config: import("./config.ts").Config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`hatch-proxy: ${err.message}\n`);
      return 78; // EX_CONFIG
    }
    throw err;
  }
  const { createLogger } = await import("./log.ts");
  const log = createLogger(config.logLevel === "silent" ? "silent" : config.logLevel, { service: `hatch-proxy-${command}` });

  switch (command) {
    case "migrate": {
      const { openConfiguredDatabase } = await import("./db/client.ts");
      const { describeDatabase } = await import("./db/client.ts");
      const db = await openConfiguredDatabase(config);
      await db.close();
      log.info("migrations applied", { database: describeDatabase(config) });
      return 0;
    }
    case "import-hatch": {
      const { runImportHatch } = await import("./cli/import-hatch.ts");
      const { runningApiTarget } = await import("./cli/import-remote.ts");
      const { openConfiguredDatabase } = await import("./db/client.ts");
      return runImportHatch(rest, { open: () => openConfiguredDatabase(config), running: () => runningApiTarget(config.dataDir, process.env) }, io);
    }
    case "traefik-config": {
      const { printTraefikConfig } = await import("./traefik/print-config.ts");
      await printTraefikConfig(config, rest.includes("--yaml") ? "yaml" : "json");
      return 0;
    }
  }
  // From here on the command serves until a signal: a long-lived process, sized as a sidecar.
  const { capYoungGeneration } = await import("./young-generation.ts");
  capYoungGeneration();
  const { runUntilSignal } = await import("./signals.ts");
  switch (command) {
    case "sim":
      return runUntilSignal(log, async () => {
        const { serveSimulator } = await import("./vms/simulator/serve.ts");
        const served = await serveSimulator(config, log);
        log.info("VM simulator listening", { url: served.api.url, vms: served.simulator.listVms().length });
        return () => served.close();
      });
    case "api":
    case "wake":
      return runUntilSignal(log, async () => {
        const [{ describeDatabase }, { startStack }] = await Promise.all([import("./db/client.ts"), import("./stack.ts")]);
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
      return runUntilSignal(log, async (atForcedExit) => {
        const { startEverything } = await import("./start.ts");
        return startEverything(config, log, atForcedExit);
      });
  }
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`hatch-proxy: ${(err as Error)?.message ?? String(err)}\n`);
    process.exit(1);
  },
);
