/** The shape of one `hatch-proxy <group> <subcommand>` and what it is given to run. */
import type { ApiAnswer } from "./http-client.ts";

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
  run(ctx: SubcommandContext<Target>): Promise<void>;
}
