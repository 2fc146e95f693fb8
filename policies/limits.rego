# Concurrency caps and rate buckets. The policy only says what the limits are (and denies
# early when current usage already fills a cap); the reservation store checks and takes every
# slot atomically, so these caps are authoritative there and advisory here.
package spawngate.admission

user_id := input.caller.user.id

# A role override replaces the global cap for that scope; with several matching roles the most
# generous wins, and null (no cap) is the most generous of all.
role_caps(scope) := {cap |
	some role in input.caller.user.roles
	cap := cfg.concurrency.roles[role][scope]
}

scope_cap(scope) := most_generous(role_caps(scope), scope)

most_generous(caps, scope) := cfg.concurrency[scope] if {
	count(caps) == 0
} else := null if {
	null in caps
} else := max(caps)

# Both the backend entry and the chosen profile may cap the backend; the tighter one applies.
backend_cap := min([cap | some cap in [backend.maxConcurrent, profile.maxConcurrent.backend]; cap != null])

# A warm pool's own spawns (docs/warm-pools.md): the gateway admits each warm worker as user
# "spawngate-pool" (role "spawngate-pool") on channel kind "pool". Unless pools.sharedCaps says
# otherwise, they count only against the caps of that caller (its user and channel caps, by role),
# not against the total, backend and profile caps that the spawns of users share: a warm worker
# then never takes a user's slot, and the spawn that claims it counts it from then on.
pool_caller if {
	channel.kind == "pool"
	"spawngate-pool" in input.caller.user.roles
}

pools_config := object.union({"sharedCaps": false}, object.get(cfg, "pools", {}))

in_shared_caps if not pool_caller

in_shared_caps if pools_config.sharedCaps == true

# Each cap as [rank, scope, key, cap, current usage], null where it does not apply, and all of them in
# one array in rank order (the output order). Not a set: in WASM a set hashes every entry it takes
# and wants a sort to be ordered, which cost more than working the caps out.
caps := [c |
	some c in [cap_total, cap_backend, cap_profile, cap_user, cap_channel, cap_profile_user, cap_profile_channel, cap_parent]
	c != null
]

default cap_total := null

cap_total := [1, "total", "*", cfg.concurrency.total, input.usage.total] if {
	in_shared_caps
	cfg.concurrency.total != null
}

default cap_backend := null

cap_backend := [2, "backend", backend_name, backend_cap, used] if {
	in_shared_caps
	profile
	used := object.get(input.usage.backends, backend_name, 0)
}

default cap_profile := null

cap_profile := [3, "profile", profile_key, cap, used] if {
	in_shared_caps
	cap := profile.maxConcurrent.profile
	cap != null
	used := object.get(input.usage.profiles, profile_key, 0)
}

default cap_user := null

cap_user := [4, "user", user_id, cap, input.usage.user] if {
	cap := scope_cap("user")
	cap != null
}

default cap_channel := null

cap_channel := [5, "channel", channel.id, cap, input.usage.channel] if {
	cap := scope_cap("channel")
	cap != null
}

default cap_profile_user := null

cap_profile_user := [6, "profile_user", key, cap, used] if {
	in_shared_caps
	cap := profile.maxConcurrent.user
	cap != null
	key := concat("/", [profile_key, user_id])
	used := object.get(input.usage.userProfiles, profile_key, 0)
}

default cap_profile_channel := null

cap_profile_channel := [7, "profile_channel", key, cap, used] if {
	in_shared_caps
	cap := profile.maxConcurrent.channel
	cap != null
	key := concat("/", [profile_key, channel.id])
	used := object.get(input.usage.channelProfiles, profile_key, 0)
}

# Fan-out: the live children one session may have at once (OpenClaw's maxChildrenPerAgent, kept
# here so that it holds across gateways and restarts).
default cap_parent := null

cap_parent := [8, "parent", input.caller.sessionKey, cap, object.get(input.usage, "children", 0)] if {
	cap := tree_setting("maxChildren")
	cap != null
}

concurrency_limits := [{"scope": c[1], "key": c[2], "max": c[3]} | some c in caps]

deny contains [30 + c[0], concat("_", ["concurrency_limit", c[1]]), msg] if {
	some c in caps
	c[4] >= c[3]
	msg := concat("", [cap_holder(c[1]), " already has ", format_int(c[4], 10), " active workers; the limit is ", format_int(c[3], 10)])
}

# Who a cap applies to, as deny messages name it.
cap_holder("total") := "spawngate as a whole"

cap_holder("backend") := concat("", ["backend ", quoted(backend_name)])

cap_holder("profile") := concat("", ["profile ", quoted(profile_key)])

cap_holder("user") := concat("", ["user ", quoted(user_id)])

cap_holder("channel") := concat("", ["channel ", quoted(channel.id)])

cap_holder("profile_user") := concat("", ["user ", quoted(user_id), " on profile ", quoted(profile_key)])

cap_holder("parent") := concat("", ["session ", quoted(input.caller.sessionKey)])

cap_holder("profile_channel") := concat("", ["channel ", quoted(channel.id), " on profile ", quoted(profile_key)])

# A per-kind entry (even null) overrides the interactive/non-interactive default for its scope;
# null, or no entry at all, means no bucket.
rate_bucket(scope) := bucket if {
	bucket := cfg.rate.kinds[channel.kind][scope]
} else := object.get(cfg.rate.nonInteractive, scope, null) if {
	non_interactive
} else := object.get(cfg.rate.interactive, scope, null)

# The user's bucket is per channel kind: a user's cron spawns drain their cron bucket, not the one
# their api or chat spawns take from. A kind never contains "/" (the request schema refuses it), so
# "<kind>/<user id>" names one kind and one user even when the user id has a "/" in it.
rate_keys := {"user": concat("/", [channel.kind, user_id]), "channel": channel.id}

rate_limits := [{"scope": scope, "key": rate_keys[scope], "perMinute": bucket.perMinute, "burst": bucket.burst} |
	some scope in ["user", "channel"]
	bucket := rate_bucket(scope)
	bucket != null
]

# Spawn-tree budgets: what one root session and everything spawned under it, however deep, may
# make over the tree's life (spawns) and run (worker-seconds, each spawn charged its TTL up front).
# The store keeps the tree's counts and enforces them with the caps; a tree idle for windowSeconds
# past its last worker's TTL is forgotten. Trees are optional in the config (older data files have
# none): every missing field is its default.
tree_defaults := {"maxChildren": null, "maxSpawns": null, "maxWorkerSeconds": null, "windowSeconds": 86400}

# One setting, as object.union(tree_defaults, trees) would have it (the defaults are no objects,
# so a set key simply wins, null included), read by direct lookup: the merged object cost more to
# build than everything that reads it.
tree_setting(key) := object.get(tree_settings, key, tree_defaults[key])

tree_settings := trees if {
	trees := object.get(cfg, "trees", {})
	is_object(trees)
} else := {}

tree_root := object.get(input.caller, "rootSessionKey", input.caller.sessionKey)

tree_budget := {
	"root": tree_root,
	"maxSpawns": tree_setting("maxSpawns"),
	"maxWorkerSeconds": tree_setting("maxWorkerSeconds"),
	"windowSeconds": tree_setting("windowSeconds"),
} if {
	some cap in [tree_setting("maxSpawns"), tree_setting("maxWorkerSeconds")]
	cap != null
}

decision_limits := {"concurrency": concurrency_limits, "rate": rate_limits, "tree": tree_budget} if {
	tree_budget
} else := {"concurrency": concurrency_limits, "rate": rate_limits}

# Waiting for a slot instead of a deny, when a full concurrency cap is all that denies: the caller
# says how long it would wait (request.waitSeconds); the policy caps it per interactivity and sets
# the waiter's priority (0..255, higher first; the most generous of the caller's roles and its
# interactivity). Optional in the config, as trees are: without it nobody waits.
queue_defaults := {"maxWaitSeconds": 0, "maxWaitNonInteractiveSeconds": 0, "priority": {"interactive": 0, "nonInteractive": 0}, "roles": {}}

queue_config := object.union(queue_defaults, queue) if {
	queue := object.get(cfg, "queue", {})
	is_object(queue)
} else := queue_defaults

wait_cap := queue_config.maxWaitNonInteractiveSeconds if non_interactive

else := queue_config.maxWaitSeconds

base_priority := queue_config.priority.nonInteractive if non_interactive

else := queue_config.priority.interactive

wait_priority := max({base_priority} | {p |
	some role in input.caller.user.roles
	p := queue_config.roles[role]
})

wait_asked := object.get(input.request, "waitSeconds", 0)

decision_wait := {"maxSeconds": min([wait_asked, wait_cap]), "priority": wait_priority} if {
	wait_asked > 0
	wait_cap > 0
}
