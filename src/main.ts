/**
 * The one entry point: `hatch-proxy <command>`. Reads the environment once, starts the requested
 * processes, and stops them cleanly on SIGINT/SIGTERM (a second signal forces exit).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { randomBytes } from "node:crypto";
import { stringify } from "yaml";
import { addrToUrl, ConfigError, loadConfig, type Config } from "./config.ts";
import { createLogger, type Logger } from "./log.ts";
import { openConfiguredDatabase } from "./db/client.ts";
import { addEmbeddedProxy, describeDatabase, findTraefikBinary, startStack, type Stack } from "./services.ts";
import { WAKE_ROUTER } from "./traefik/config-builder.ts";
import { buildStaticConfig, TRAEFIK_INTERNAL_PORT } from "./traefik/static-config.ts";
import { printTraefikConfig } from "./traefik/print-config.ts";
import { createSimulator } from "./vms/simulator/index.ts";
import { PEOPLE_COMMANDS, PEOPLE_USAGE, runPeopleCommand } from "./cli/people.ts";
import { SERVICE_COMMANDS } from "./cli/commands.ts";

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
    case "traefik-config":
      await printTraefikConfig(config, rest.includes("--yaml") ? "yaml" : "json");
      return 0;
    case "sim":
      return runUntilSignal(log, async () => {
        const sim = await createSimulator({
          ipPrefix: config.simIpPrefix,
          restoreMs: config.simRestoreMs,
          stateFile: join(config.dataDir, "simulator.json"),
          log,
        });
        const served = await sim.listen({ host: config.simAddr.host ?? "0.0.0.0", port: config.simAddr.port });
        log.info("VM simulator listening", { url: served.url, vms: sim.listVms().length });
        return async () => {
          await served.close();
          await sim.close();
        };
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
      return runUntilSignal(log, () => startEverything(config, log));
  }
  return 2;
}

/** `npm start`: every part in one process, Traefik as a child when a binary is found. */
async function startEverything(config: Config, log: Logger): Promise<() => Promise<void>> {
  if (!config.hatchApiUrl) {
    // Simulated VMs listen on 127.0.1.N:<guest port>; a wildcard listener on the same port (":8080")
    // would take that port on every loopback address, so the embedded product binds 127.0.0.1.
    const local = (a: Config["httpAddr"]) => (a.host ? a : { ...a, host: "127.0.0.1" });
    config = { ...config, httpAddr: local(config.httpAddr), proxyAddr: local(config.proxyAddr), wakeAddr: local(config.wakeAddr) };
  }
  const traefikBin = config.proxyFront === "embedded" ? undefined : findTraefikBinary(config);
  if (!traefikBin && config.proxyFront === "traefik") {
    throw new Error(`HATCH_PROXY_FRONT=traefik but no Traefik binary was found${config.traefikBin ? ` (TRAEFIK_BIN=${config.traefikBin} is not executable)` : " (set TRAEFIK_BIN, put traefik on PATH, or run `bash scripts/traefik.sh`)"}`);
  }
  // Traefik and the sidecar are both ours here, so they can share a fresh secret.
  if (traefikBin && !config.wakeSecret) config = { ...config, wakeSecret: randomBytes(24).toString("base64url") };
  // Our own Traefik's direct traffic is activity, and sleeps wait until it has dropped a VM's routers.
  if (traefikBin) config = { ...config, traefikApiUrls: [...config.traefikApiUrls, `http://127.0.0.1:${TRAEFIK_INTERNAL_PORT}`] };
  const stack = await startStack(config, log, { api: true, simulator: true, wake: Boolean(traefikBin) });
  let front =
    config.proxyFront === "embedded"
      ? "embedded proxy (HATCH_PROXY_FRONT=embedded)"
      : "embedded proxy (no Traefik binary found: set TRAEFIK_BIN or run `bash scripts/traefik.sh`)";
  let traefik: ChildProcess | undefined;
  if (traefikBin) {
    try {
      traefik = await startTraefik(traefikBin, config, log);
      front = `Traefik (${traefikBin})`;
      stack.defer(() => stopChild(traefik!));
    } catch (err) {
      if (config.proxyFront === "traefik") throw err;
      log.warn("Traefik did not start; serving the proxy port with the embedded proxy", { error: err });
      front = `embedded proxy (Traefik failed to start: ${(err as Error).message})`;
    }
  }
  if (!traefik) {
    // Nothing routes around the proxy: no Traefik to read or to wait for.
    stack.fronts?.setUrls(config.traefikApiUrls.filter((u) => u !== `http://127.0.0.1:${TRAEFIK_INTERNAL_PORT}`));
    await addEmbeddedProxy(stack);
  }
  printBanner(stack, config, front);
  return () => stack.close();
}

/** Writes the derived static config into the data dir, runs Traefik, and waits for its ping. */
async function startTraefik(bin: string, config: Config, log: Logger): Promise<ChildProcess> {
  mkdirSync(config.dataDir, { recursive: true });
  const file = resolve(config.dataDir, "traefik.yml");
  writeFileSync(file, stringify(buildStaticConfig(config)), { mode: 0o600 });
  const child = spawn(bin, [`--configFile=${file}`], { stdio: ["ignore", "pipe", "pipe"] });
  const logFile = createWriteStream(resolve(config.dataDir, "traefik.log"), { flags: "a" });
  child.stdout!.pipe(logFile);
  child.stderr!.pipe(logFile);
  const exited = new Promise<never>((_, reject) =>
    child.once("exit", (code, signal) => reject(new Error(`traefik exited (${signal ?? `code ${code}`}); see ${resolve(config.dataDir, "traefik.log")}`))),
  );
  exited.catch(() => {});
  const ping = `http://127.0.0.1:${TRAEFIK_INTERNAL_PORT}/ping`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    const ok = await Promise.race([
      fetch(ping, { signal: AbortSignal.timeout(500) }).then((r) => r.ok, () => false),
      exited,
    ]);
    if (ok) break;
    if (Date.now() > deadline) {
      await stopChild(child);
      throw new Error("traefik did not answer its ping within 15s");
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  // Ping answers before the first provider poll is applied; until then Traefik answers 404 for
  // every host. Wait for our catch-all router, so the banner only appears once requests route.
  const router = `http://127.0.0.1:${TRAEFIK_INTERNAL_PORT}/api/http/routers/${WAKE_ROUTER}@http`;
  for (;;) {
    const ok = await Promise.race([fetch(router, { signal: AbortSignal.timeout(500) }).then((r) => r.ok, () => false), exited]);
    if (ok) break;
    if (Date.now() > deadline) {
      await stopChild(child);
      throw new Error(`traefik did not load the configuration from ${config.routeApiUrl}/traefik/config within 15s`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.once("exit", (code, signal) => log.error("traefik exited", { code, signal }));
  log.info("traefik started", { pid: child.pid, static_config: file });
  return child;
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.removeAllListeners("exit");
    child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

function printBanner(stack: Stack, config: Config, front: string): void {
  const proxyPort = config.proxyAddr.port;
  const api = stack.api!.url;
  const sim = stack.simApi?.url ?? config.hatchApiUrl ?? "";
  const key = stack.generatedKey ?? "<your API key>";
  const lines = [
    "",
    `hatch-proxy ${VERSION} is running`,
    `  proxy       http://<subdomain>.${config.baseDomain}:${proxyPort}  via ${front}`,
    `  route API   ${api}  (OpenAPI: ${api}/openapi.json, Traefik config: ${api}/traefik/config)`,
    ...(stack.wake ? [`  wake        ${stack.wake.url}`] : []),
    `  database    ${describeDatabase(config)}`,
    `  VMs         ${stack.simulator ? `built-in simulator, API at ${sim}` : `Hatch at ${config.hatchApiUrl}`}`,
    stack.generatedKey ? `  API key     ${stack.generatedKey}  (generated once, kept in ${stack.keyFile})` : `  API key     from ${config.apiKeys ? "HATCH_API_KEYS" : "HATCH_BETTER_AUTH_VERIFY_URL"}`,
    "",
    "Try it:",
    ...(stack.simulator ? [`  curl -s -X POST ${sim}/vms                    # a VM; note its "id"`] : []),
    `  curl -s -H 'Authorization: Bearer ${key}' -d '{"subdomain":"myapp","target_port":8080}' ${api}/vms/<id>/routes`,
    `  curl -s -H 'Host: myapp.${config.baseDomain}' http://127.0.0.1:${proxyPort}/`,
    "",
  ];
  process.stderr.write(lines.join("\n") + "\n");
}

/** Starts with `start`, then waits for SIGINT/SIGTERM and stops; a second signal exits at once. */
async function runUntilSignal(log: Logger, start: () => Promise<() => Promise<void>>): Promise<number> {
  const stop = await start();
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.warn("second signal: exiting now", { signal });
        process.exit(130);
      }
      stopping = true;
      log.info("stopping: finishing in-flight requests", { signal });
      stop().then(
        () => resolve(0),
        (err) => {
          log.error("shutdown failed", { error: err });
          resolve(1);
        },
      );
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`hatch-proxy: ${(err as Error)?.message ?? String(err)}\n`);
    process.exit(1);
  },
);
