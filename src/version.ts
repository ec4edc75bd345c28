/**
 * The version in package.json, read at run time: the same relative path holds from src/ (tsx) and
 * from dist/ (the build), and in the image, which ships package.json beside dist/.
 */
import { readFileSync } from "node:fs";

export const VERSION: string = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;
