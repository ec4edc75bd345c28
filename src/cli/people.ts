/**
 * The commands for people: `hatch-proxy routes …` (the route API) and `hatch-proxy vms …` (the VM
 * platform API, but `vms sleep` and `vms activity` the route API, which runs the sleep protocol).
 * main.ts dispatches here; nothing in this module exits the process or reads process.env: the
 * environment and the output streams come in as arguments.
 */
import { parseArgs } from "node:util";
import { PEOPLE_COMMANDS } from "./commands.ts";
import { CliError, type ApiAnswer, type ApiTarget } from "./http-client.ts";
import { BUG_HINT, callHint, usageHint } from "./json-hints.ts";
import { ROUTE_SUBCOMMANDS } from "./routes-command.ts";
import { SLEEP_SUBCOMMANDS } from "./sleep-command.ts";
import type { ApiName, OptionSpec, Printer, Subcommand } from "./subcommand.ts";
import { routeApiTarget, UsageError, vmApiTarget } from "./targets.ts";
import { VM_SUBCOMMANDS } from "./vms-command.ts";

export { PEOPLE_COMMANDS };
export type PeopleCommand = (typeof PEOPLE_COMMANDS)[number];

/** Where output goes: `out`/`err` receive one line at a time, newline included, to write as is (process.stdout.write). */
export interface PeopleIo {
  out: (s: string) => void;
  err: (s: string) => void;
  fetch?: typeof fetch;
}

type Env = Record<string, string | undefined>;

/** One API the commands talk to: the flags that point at it, and where they lead. */
interface Api {
  /** For the group listing of a subcommand that calls another API than its group's. */
  label: string;
  options: Record<string, OptionSpec>;
  target(env: Env, values: Record<string, unknown>): ApiTarget;
}

const APIS: Record<ApiName, Api> = {
  route: {
    label: "route API",
    options: {
      "api-url": { type: "string", help: "route API URL (default HATCH_PROXY_URL, else http://127.0.0.1:<HATCH_HTTP_ADDR port>)" },
      "api-key": { type: "string", help: "route API key (default HATCH_PROXY_API_KEY, else the key npm start keeps in <HATCH_DATA_DIR>/api-key, here or in the project)" },
    },
    target: (env, values) => routeApiTarget(env, values as Parameters<typeof routeApiTarget>[1]),
  },
  vm: {
    label: "VM API",
    options: {
      "vm-api-url": { type: "string", help: "VM API URL (default HATCH_API_URL, else the simulator on HATCH_SIM_ADDR)" },
      "vm-api-key": { type: "string", help: "VM API key (default HATCH_API_KEY)" },
    },
    target: (env, values) => vmApiTarget(env, values as Parameters<typeof vmApiTarget>[1]),
  },
};

interface Group {
  title: string;
  subcommands: Subcommand<ApiTarget>[];
  /** The API its subcommands call unless one says otherwise. */
  api: ApiName;
}

const COMMON_OPTIONS: Record<string, OptionSpec> = {
  json: { type: "boolean", help: "print the API's JSON answer as is, and errors as JSON on stderr (for scripts)" },
  help: { type: "boolean", help: "show this help" },
};

const GROUPS: Record<PeopleCommand, Group> = {
  routes: {
    title: "Routes (the route API: --api-url/--api-key, or HATCH_PROXY_URL/HATCH_PROXY_API_KEY; default: the local npm start)",
    subcommands: ROUTE_SUBCOMMANDS,
    api: "route",
  },
  vms: {
    title: "VMs (the simulator on HATCH_SIM_ADDR, or a real Hatch at HATCH_API_URL with HATCH_API_KEY)",
    subcommands: [...VM_SUBCOMMANDS, ...SLEEP_SUBCOMMANDS],
    api: "vm",
  },
};

/** The API a subcommand calls: its own, else its group's. */
const apiOf = (group: PeopleCommand, sub: Subcommand<ApiTarget>): Api => APIS[sub.api ?? GROUPS[group].api];

function optionSynopsis(name: string, spec: OptionSpec): string {
  return spec.type === "string" ? `--${name} <value>` : `--${name}`;
}

function groupUsage(group: PeopleCommand): string[] {
  const g = GROUPS[group];
  // A subcommand that calls another API than the group's says which (aligned among those).
  const other = (s: Subcommand<ApiTarget>) => (s.api && s.api !== g.api ? APIS[s.api] : undefined);
  const width = Math.max(0, ...g.subcommands.filter(other).map((s) => s.synopsis.length));
  const line = (s: Subcommand<ApiTarget>) => {
    const api = other(s);
    return api ? `  hatch-proxy ${s.synopsis.padEnd(width)}  (${api.label})` : `  hatch-proxy ${s.synopsis}`;
  };
  return [`${g.title}:`, ...g.subcommands.map(line)];
}

function subcommandHelp(group: PeopleCommand, sub: Subcommand<ApiTarget>): string[] {
  const options = { ...sub.options, ...apiOf(group, sub).options, ...COMMON_OPTIONS };
  const rows = Object.entries(options).map(([name, spec]) => [optionSynopsis(name, spec), spec.help] as const);
  const width = Math.max(...rows.map(([o]) => o.length));
  return [`usage: hatch-proxy ${sub.synopsis}`, "", sub.about, "", "options:", ...rows.map(([o, h]) => `  ${o.padEnd(width)}  ${h}`)];
}

/** Help text lines for `hatch-proxy help`. */
export const PEOPLE_USAGE: string = [
  ...groupUsage("routes"),
  ...groupUsage("vms"),
  "Every routes/vms command takes --json (the API's answer as is; errors as JSON on stderr) and --help.",
].join("\n");

/** An error as --json reports it on stderr: one JSON object, on one line. */
export interface JsonError {
  /** The API's own error text when it answered one, else ours. */
  error: string;
  /** The HTTP status of the API's answer, when there was one. */
  status?: number;
  /** What to do about it (where the key came from, for a 401; the command's --help for a usage error). */
  hint: string;
}

/**
 * Runs `routes …` / `vms …`; returns the process exit code (0 done, 1 failed, 2 bad usage). Never
 * calls process.exit itself. With --json, errors are JsonError on stderr, with the same codes.
 */
export async function runPeopleCommand(argv: string[], env: Env, streams: PeopleIo): Promise<number> {
  const io = { out: (line: string) => streams.out(`${line}\n`), err: (line: string) => streams.err(`${line}\n`) };
  const [groupName, subName, ...rest] = argv;
  // Known before the arguments are parsed, so that even a usage error is JSON for a script.
  const dashes = argv.indexOf("--");
  const json = (dashes === -1 ? argv : argv.slice(0, dashes)).includes("--json");
  const jsonError = (e: JsonError) => io.err(JSON.stringify(e));
  /** `command`: as far as the arguments name one (`routes create`, `routes`, or none). */
  const usageError = (message: string, usage: string[], command: string) => {
    if (json) {
      jsonError({ error: message, hint: usageHint(command) });
      return 2;
    }
    io.err(`error: ${message}`);
    io.err("");
    for (const line of usage) io.err(line);
    return 2;
  };
  if (!groupName || !(PEOPLE_COMMANDS as readonly string[]).includes(groupName)) {
    return usageError(groupName ? `unknown command "${groupName}"` : "missing command", PEOPLE_USAGE.split("\n"), "");
  }
  const group = groupName as PeopleCommand;
  const g = GROUPS[group];
  if (subName === "--help" || subName === "-h" || subName === "help") {
    for (const line of groupUsage(group)) io.out(line);
    return 0;
  }
  const sub = g.subcommands.find((s) => s.name === subName);
  if (!sub) return usageError(subName ? `unknown ${group} command "${subName}"` : `missing ${group} command`, groupUsage(group), group);

  const untilDashes = rest.indexOf("--") === -1 ? rest : rest.slice(0, rest.indexOf("--"));
  if (untilDashes.includes("--help") || untilDashes.includes("-h")) {
    for (const line of subcommandHelp(group, sub)) io.out(line);
    return 0;
  }
  const api = apiOf(group, sub);
  const command = `${group} ${sub.name}`;
  const specs = { ...sub.options, ...api.options, ...COMMON_OPTIONS };
  const usage = [`usage: hatch-proxy ${sub.synopsis}`, `(hatch-proxy ${group} ${sub.name} --help for the options)`];
  let values: Record<string, string | boolean | string[] | undefined>;
  let positionals: string[];
  try {
    const parsed = parseArgs({
      args: rest,
      options: Object.fromEntries(Object.entries(specs).map(([name, s]) => [name, { type: s.type, multiple: s.multiple ?? false }])),
      allowPositionals: true,
      strict: true,
    });
    values = parsed.values as typeof values;
    positionals = parsed.positionals;
  } catch (err) {
    return usageError(parseArgsMessage(err, `${group} ${sub.name}`), usage, command);
  }
  if (positionals.length < sub.positionals.length) {
    return usageError(`${group} ${sub.name}: missing <${sub.positionals[positionals.length]}>`, usage, command);
  }
  if (positionals.length > sub.positionals.length) {
    return usageError(`${group} ${sub.name}: unexpected argument ${JSON.stringify(positionals[sub.positionals.length])}`, usage, command);
  }
  for (const [i, name] of sub.positionals.entries()) {
    if (!positionals[i]!.trim()) return usageError(`${group} ${sub.name}: <${name}> must not be empty`, usage, command);
  }

  const print = Object.assign(
    (answer: ApiAnswer, lines: () => string[]) => {
      if (json) io.out(answer.text.replace(/\n+$/, ""));
      else for (const line of lines()) io.out(line);
    },
    { json },
  ) as Printer;
  try {
    const target = api.target(env, values);
    await sub.run({ target, args: positionals, values, fetch: streams.fetch ?? fetch, print });
    return 0;
  } catch (err) {
    if (err instanceof UsageError) return usageError(err.message, usage, command);
    if (err instanceof CliError) {
      if (json) jsonError({ error: err.apiError ?? err.message, ...(err.status !== undefined && { status: err.status }), hint: callHint(err, command, api.label) });
      else for (const line of [`error: ${err.message}`, ...(err.hint ? [err.hint] : [])].join("\n").split("\n")) io.err(line);
      return 1;
    }
    const message = `unexpected failure: ${(err as Error)?.message ?? String(err)}`;
    if (json) jsonError({ error: message, hint: BUG_HINT });
    else io.err(`error: ${message}`);
    return 1;
  }
}

/** node:util parseArgs errors, reworded for people (its own texts suggest `--` tricks). */
function parseArgsMessage(err: unknown, command: string): string {
  const e = err as { code?: string; message?: string };
  const option = /'(-[^' ]+)/.exec(e.message ?? "")?.[1];
  if (e.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && option) return `${command}: unknown option ${option}`;
  if (e.code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && option) {
    if (/argument missing/.test(e.message ?? "")) return `${command}: ${option} needs a value`;
    if (/ambiguous/.test(e.message ?? "")) return `${command}: ${option} needs a value (for one starting with "-", write ${option}=<value>)`;
    return `${command}: ${option} takes no value`;
  }
  return `${command}: ${e.message ?? String(err)}`;
}
