CREATE TABLE "owner_credentials" (
	"owner" text PRIMARY KEY NOT NULL,
	"sealed" text NOT NULL,
	"key_digest" text NOT NULL,
	"key_id" text NOT NULL,
	"updated_at" timestamp (3) with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE INDEX "routes_owner_vm_idx" ON "routes" USING btree ("owner","vm_id");