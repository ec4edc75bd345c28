# hatch-proxy: one image for every service command (api, wake, sim, migrate, start, ...).
# The build stage compiles the TypeScript (npm run build); the final stage runs dist/ on plain node
# with production dependencies only: no src/, no tsx, no TypeScript.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
COPY src ./src
COPY drizzle ./drizzle
RUN npm run build

FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=optional: npm would otherwise install TypeScript, an optional peer of valibot.
RUN npm ci --omit=dev --omit=optional --no-audit --no-fund && npm cache clean --force

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY bin ./bin
COPY --from=build /app/dist ./dist
COPY drizzle ./drizzle
COPY traefik ./traefik
# Code stays root-owned (read-only to the service); only the data dir (HATCH_DATA_DIR default
# ./data: simulator VMs, generated key, embedded database) is writable. `hatch-proxy` on PATH
# lets people run `docker compose exec api hatch-proxy routes list <vm>`.
RUN mkdir -p /app/data && chown node:node /app/data \
 && printf '#!/bin/sh\nexec node /app/dist/main.js "$@"\n' > /usr/local/bin/hatch-proxy \
 && chmod 755 /usr/local/bin/hatch-proxy
USER node
EXPOSE 8080 8090 9090 9091
ENTRYPOINT ["node", "dist/main.js"]
CMD ["help"]
