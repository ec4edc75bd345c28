/**
 * The `hint` of every --json error (README: errors are `{"error", "status", "hint"}`): what to do
 * about it, for a script's log or its user. The same errors without --json show the usage or the
 * API's own words, which say as much.
 */
import type { CliError } from "./http-client.ts";

/** For a usage error in `command` (`routes create`, `routes`, or "" when none was named): where the usage is. */
export function usageHint(command: string): string {
  if (command.includes(" ")) return `hatch-proxy ${command} --help shows its arguments and options`;
  return command ? `hatch-proxy ${command} --help lists its commands` : "hatch-proxy help lists the commands";
}

/** For a call of `command` to `api` ("route API", "VM API") that failed. */
export function callHint(err: CliError, command: string, api: string): string {
  if (err.hint) return err.hint;
  if (err.status === undefined) return `check that the ${api} runs and is reachable at the URL in the error (hatch-proxy ${command} --help shows the options that point at it)`;
  if (err.status === 404) return "check the id: hatch-proxy routes list <vm> lists a VM's routes, hatch-proxy vms list the VMs";
  if (err.status >= 500) return `the ${api} could not do it now: try again shortly; its log says why`;
  return `the ${api} refused the request as sent: the error says what to change`;
}

/** For a failure of the CLI itself. */
export const BUG_HINT = "an unexpected failure of the CLI: run the command again without --json for the full message, and report it";
