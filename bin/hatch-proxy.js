#!/usr/bin/env node
// Runs the TypeScript entry point through tsx's loader, so `npx hatch-proxy …` works without a build.
import { register } from "tsx/esm/api";

register();
await import("../src/main.ts");
