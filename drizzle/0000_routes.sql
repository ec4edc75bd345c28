CREATE TABLE "routes" (
	"id" text PRIMARY KEY NOT NULL,
	"vm_id" text NOT NULL,
	"subdomain" text NOT NULL,
	"target_port" integer NOT NULL,
	"auto_wake" boolean DEFAULT true NOT NULL,
	"owner" text DEFAULT '' NOT NULL,
	"created_at" timestamp (6) with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp (6) with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "routes_subdomain_key" UNIQUE("subdomain"),
	CONSTRAINT "routes_target_port_range" CHECK ("routes"."target_port" BETWEEN 1 AND 65535)
);
--> statement-breakpoint
CREATE INDEX "routes_vm_created_idx" ON "routes" USING btree ("vm_id","created_at" DESC NULLS LAST,"id" DESC NULLS LAST);