// Inside a test's own network namespace, 127.0.0.1:5432 is nobody: this relays it to the host's
// PostgreSQL through its Unix socket (a file, reachable from every network namespace). Plain
// JavaScript so it starts without a loader; it lives as long as the namespace's processes.
import { connect, createServer } from "node:net";

const socketPath = process.env.PG_SOCKET ?? "/var/run/postgresql/.s.PGSQL.5432";
const server = createServer((client) => {
  const pg = connect(socketPath);
  client.pipe(pg).pipe(client);
  const end = () => {
    client.destroy();
    pg.destroy();
  };
  client.on("error", end);
  pg.on("error", end);
});
server.listen(5432, "127.0.0.1", () => process.stdout.write("pg relay ready\n"));
