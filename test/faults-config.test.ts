/**
 * Issue 10, item 9: a bad configuration value is printed so the operator can see what is wrong,
 * but never a secret in it: the password (or token) of any URL, and secret-looking query
 * parameters, are redacted in every variable's message.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, ENV_VARS, loadConfig, redactValue } from "../src/config.ts";

const SECRET = "Sup3rS3cretPw";

// Credentials in every shape a value may carry them. Each is a bad value for most variables.
const CARRIERS = [
  `mysql://admin:${SECRET}@db/x`,
  `mysql://admin:${SECRET}@db:3306`,
  `ftp://admin:p@ss/${SECRET}@db/x`, // unencoded @ and / in the password
  `https://${SECRET}@api.example.com/v1/`, // a token as the user part
  `mysql://admin@db/x?sslmode=require&password=${SECRET}`,
  `redis://db/0?auth_token=${SECRET}&x=1`,
  `http://127.0.0.1:1, ftp://root:${SECRET}@10.0.0.1`, // a list
  `not a url admin:${SECRET}@db`,
];

describe("configuration errors", () => {
  it.each(Object.keys(ENV_VARS))("%s: a bad value is named without the secrets it carries", (name) => {
    let bad = 0;
    for (const value of CARRIERS) {
      let err: unknown;
      try {
        // With the operator key per-user keys need, so only the value under test can be refused.
        loadConfig({ HATCH_CREDENTIALS_KEY: "ab".repeat(32), [name]: value });
      } catch (e) {
        err = e;
      }
      if (!err) continue;
      bad += 1;
      expect(err).toBeInstanceOf(ConfigError);
      const text = (err as Error).message;
      expect(text, value).not.toContain(SECRET);
      expect(text).toContain(`${name}=`);
    }
    // Every variable refuses at least one of these shapes, so each is really checked.
    if (!["HATCH_DATA_DIR", "HATCH_API_KEY", "HATCH_TRAEFIK_TOKEN", "HATCH_WAKE_SECRET", "HATCH_TRAEFIK_CERT_RESOLVER", "HATCH_IDLE_SSH_CONNTRACK", "TRAEFIK_BIN", "HATCH_API_KEYS"].includes(name)) {
      expect(bad).toBeGreaterThan(0);
    }
  });

  it("the repro: DATABASE_URL with a MySQL URL names the problem and the user, not the password", () => {
    expect(() => loadConfig({ DATABASE_URL: `mysql://admin:${SECRET}@db/x` })).toThrow(
      `DATABASE_URL="mysql://admin:***@db/x": expected a postgres:// or postgresql:// URL`,
    );
  });

  it("redacts what can carry a secret and leaves the rest readable", () => {
    expect(redactValue(`postgres://u:${SECRET}@h:5432/db?sslmode=require&password=${SECRET}&application_name=x`)).toBe(
      "postgres://u:***@h:5432/db?sslmode=require&password=***&application_name=x",
    );
    expect(redactValue(`https://${SECRET}@h/`)).toBe("https://***@h/");
    expect(redactValue("http://127.0.0.1:9092,http://10.0.0.2:9092")).toBe("http://127.0.0.1:9092,http://10.0.0.2:9092");
    expect(redactValue(":8080")).toBe(":8080");
    expect(redactValue("60 seconds")).toBe("60 seconds");
  });
});
