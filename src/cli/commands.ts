/**
 * The service commands of `hatch-proxy <command>` (each runs one long-lived part, or all of them
 * for `start`). Kept apart from main.ts so compose.yaml can be checked against it without
 * importing the entry point.
 */
/** The commands for people (cli/people.ts), listed here so dispatching to them loads nothing else. */
export const PEOPLE_COMMANDS = ["routes", "vms"] as const;

export const SERVICE_COMMANDS = ["start", "api", "wake", "sim", "migrate", "traefik-config", "import-hatch"] as const;

export type ServiceCommand = (typeof SERVICE_COMMANDS)[number];

/** True when `name` is one of SERVICE_COMMANDS. */
export function isServiceCommand(name: string): name is ServiceCommand {
  return (SERVICE_COMMANDS as readonly string[]).includes(name);
}
