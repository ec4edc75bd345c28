/**
 * `hatch-proxy start` (`npm start`): every part in one process on embedded defaults, Traefik as a
 * supervised child when a binary is found, then the banner.
 */
import { join } from "node:path";
import type { Config } from "./config.ts";
import type { Logger } from "./log.ts";
import { lockDirectory } from "./db/data-dir-lock.ts";
import { getRouteBySubdomain } from "./db/routes.repo.ts";
import { addEmbeddedProxy, startStack, type Stack } from "./stack.ts";
import { describeDatabase } from "./db/client.ts";
import { findTraefikBinary } from "./traefik/binary.ts";
import type { AtForcedExit, Running } from "./signals.ts";
import { TraefikSupervisor } from "./traefik/supervisor.ts";
import { VERSION } from "./version.ts";

/** `npm start`: every part in one process, Traefik as a supervised child when a binary is found. */
export async function startEverything(config: Config, log: Logger, atForcedExit: AtForcedExit): Promise<Running> {
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
    `  curl -s -H 'Authorization: Bearer ${key}' -H 'Content-Type: application/json' -d '{"subdomain":"${sub}","target_port":8080}' ${api}/vms/<id>/routes`,
    `  curl -s -H 'Host: ${sub}.${config.baseDomain}' http://127.0.0.1:${proxyPort}/`,
    "",
  ];
  process.stderr.write(lines.join("\n") + "\n");
}

