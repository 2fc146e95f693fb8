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

scope_cap(scope) := null if null in role_caps(scope)

scope_cap(scope) := max(caps) if {
	caps := role_caps(scope)
	count(caps) > 0
	not null in caps
}

scope_cap(scope) := cfg.concurrency[scope] if count(role_caps(scope)) == 0

# Both the backend entry and the chosen profile may cap the backend; the tighter one applies.
backend_cap := min({cap | some cap in [backend.maxConcurrent, profile.maxConcurrent.backend]; cap != null})

# Entries: rank (output order), scope, key, cap, current usage, and how to name the thing in a message.
caps contains [1, "total", "*", cfg.concurrency.total, input.usage.total, "spawngate as a whole"] if {
	cfg.concurrency.total != null
}

caps contains [2, "backend", backend_name, backend_cap, used, sprintf("backend \"%s\"", [backend_name])] if {
	profile
	used := object.get(input.usage.backends, backend_name, 0)
}

caps contains [3, "profile", profile_key, cap, used, sprintf("profile \"%s\"", [profile_key])] if {
	cap := profile.maxConcurrent.profile
	cap != null
	used := object.get(input.usage.profiles, profile_key, 0)
}

caps contains [4, "user", user_id, cap, input.usage.user, sprintf("user \"%s\"", [user_id])] if {
	cap := scope_cap("user")
	cap != null
}

caps contains [5, "channel", channel.id, cap, input.usage.channel, sprintf("channel \"%s\"", [channel.id])] if {
	cap := scope_cap("channel")
	cap != null
}

caps contains [6, "profile_user", key, cap, used, what] if {
	cap := profile.maxConcurrent.user
	cap != null
	key := concat("/", [profile_key, user_id])
	used := object.get(input.usage.userProfiles, profile_key, 0)
	what := sprintf("user \"%s\" on profile \"%s\"", [user_id, profile_key])
}

caps contains [7, "profile_channel", key, cap, used, what] if {
	cap := profile.maxConcurrent.channel
	cap != null
	key := concat("/", [profile_key, channel.id])
	used := object.get(input.usage.channelProfiles, profile_key, 0)
	what := sprintf("channel \"%s\" on profile \"%s\"", [channel.id, profile_key])
}

concurrency_limits := [{"scope": c[1], "key": c[2], "max": c[3]} | some c in sort(caps)]

deny contains [30 + c[0], concat("_", ["concurrency_limit", c[1]]), msg] if {
	some c in caps
	c[4] >= c[3]
	msg := sprintf("%s already has %d active workers; the limit is %d", [c[5], c[4], c[3]])
}

# A per-kind entry (even null) overrides the interactive/non-interactive default for its scope.
rate_bucket(scope) := cfg.rate.kinds[channel.kind][scope]

rate_bucket(scope) := cfg.rate.nonInteractive[scope] if {
	not kind_rate_override(scope)
	non_interactive
}

rate_bucket(scope) := cfg.rate.interactive[scope] if {
	not kind_rate_override(scope)
	not non_interactive
}

kind_rate_override(scope) if {
	_ = cfg.rate.kinds[channel.kind][scope]
}

rate_keys := {"user": user_id, "channel": channel.id}

rate_limits := [{"scope": scope, "key": rate_keys[scope], "perMinute": bucket.perMinute, "burst": bucket.burst} |
	some scope in ["user", "channel"]
	bucket := rate_bucket(scope)
	bucket != null
]
