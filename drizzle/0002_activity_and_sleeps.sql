CREATE TABLE "leases" (
	"name" text PRIMARY KEY NOT NULL,
	"holder" text NOT NULL,
	"expires_at" timestamp (3) with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "vm_activity" (
	"vm_id" text PRIMARY KEY NOT NULL,
	"last_activity_at" timestamp (3) with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "vm_connections" (
	"vm_id" text NOT NULL,
	"holder" text NOT NULL,
	"open_count" integer NOT NULL,
	"seen_at" timestamp (3) with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "vm_connections_pkey" PRIMARY KEY("vm_id","holder"),
	CONSTRAINT "vm_connections_open_count" CHECK ("vm_connections"."open_count" >= 0)
);
--> statement-breakpoint
CREATE TABLE "vm_sleeps" (
	"vm_id" text PRIMARY KEY NOT NULL,
	"phase" text NOT NULL,
	"reason" text NOT NULL,
	"action" text NOT NULL,
	"holder" text NOT NULL,
	"started_at" timestamp (3) with time zone DEFAULT now() NOT NULL,
	"heartbeat_at" timestamp (3) with time zone DEFAULT now() NOT NULL,
	"cancelled_at" timestamp (3) with time zone,
	"cancel_reason" text,
	CONSTRAINT "vm_sleeps_phase" CHECK ("vm_sleeps"."phase" IN ('draining', 'sleeping')),
	CONSTRAINT "vm_sleeps_reason" CHECK ("vm_sleeps"."reason" IN ('idle', 'api')),
	CONSTRAINT "vm_sleeps_action" CHECK ("vm_sleeps"."action" IN ('snapshot', 'stop'))
);
