# hatch-proxy: one image for every service command (api, wake, sim, migrate, start, ...).
# TypeScript runs through tsx (a production dependency), so there is no build step.

FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY bin ./bin
COPY src ./src
COPY drizzle ./drizzle
COPY traefik ./traefik
# Code stays root-owned (read-only to the service); only the data dir (HATCH_DATA_DIR default
# ./data: simulator VMs, generated key, embedded database) is writable. `hatch-proxy` on PATH
# lets people run `docker compose exec api hatch-proxy routes list <vm>`.
RUN mkdir -p /app/data && chown node:node /app/data \
 && printf '#!/bin/sh\nexec node /app/bin/hatch-proxy.js "$@"\n' > /usr/local/bin/hatch-proxy \
 && chmod 755 /usr/local/bin/hatch-proxy
USER node
EXPOSE 8080 8090 9090 9091
ENTRYPOINT ["node", "bin/hatch-proxy.js"]
CMD ["help"]
