/** The shape of one `hatch-proxy <group> <subcommand>` and what it is given to run. */
import type { ApiAnswer } from "./http-client.ts";

/** The two APIs the CLI talks to: hatch-proxy's route API, and the VM platform's (simulator or Hatch). */
export type ApiName = "route" | "vm";

export interface OptionSpec {
  type: "string" | "boolean";
  multiple?: boolean;
  /** One line for --help. */
  help: string;
}

/** Prints an answer: its raw body with --json, else the lines built for people. */
export interface Printer {
  (answer: ApiAnswer, lines: () => string[]): void;
  readonly json: boolean;
}

export interface SubcommandContext<Target> {
  target: Target;
  /** Positionals, exactly as many as the subcommand declares. */
  args: string[];
  values: Record<string, string | boolean | string[] | undefined>;
  fetch: typeof fetch;
  print: Printer;
}

export interface Subcommand<Target> {
  name: string;
  /** Usage line without the program name, e.g. "routes list <vm>". */
  synopsis: string;
  about: string;
  positionals: string[];
  options: Record<string, OptionSpec>;
  /** The API it calls when not its group's (`vms sleep` and `vms activity`: the route API). */
  api?: ApiName;
  run(ctx: SubcommandContext<Target>): Promise<void>;
}
