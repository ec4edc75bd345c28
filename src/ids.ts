import { randomInt } from "node:crypto";

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** `n` characters from [a-z0-9], uniformly, from the OS's cryptographic random source. */
export function randomAlnum(n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) s += ALPHABET[randomInt(ALPHABET.length)];
  return s;
}

/** A route id: `rt_` + 16 random lowercase alphanumerics (~82 bits). */
export const newRouteId = () => `rt_${randomAlnum(16)}`;
