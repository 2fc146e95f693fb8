# Tunables live in data (policies/data.json → data.spawngate.admission.config) so that a
# security team changes numbers and lists without touching rules. A config that is missing
# or malformed denies every spawn (policy_config_invalid) instead of silently relaxing a rule.
#
# WASM keeps nothing between evaluations. config_well_formed is the check, written as direct
# lookups without building tables, sets or messages; it decides. config_problems says what is
# wrong, one message per problem, and is evaluated only when the check fails. The two must agree:
# config_test.rego breaks every field in turn.
#
# The engine runs the check once per bundle: it evaluates a canary decision on the bundle's data
# and, when that carries no policy_config_invalid, sets data.spawngate.runtime.configChecked (it
# writes the config and the flag together, so the flag cannot outlive the config it vouches for).
# Everywhere else (opa eval, opa test, a REST sidecar) the flag is absent and every evaluation
# checks. Nothing but the engine may set it: with it, a broken config is no longer denied.
package spawngate.admission

default cfg := {}

cfg := data.spawngate.admission.config

default config_valid := false

config_valid if {
	data.spawngate.runtime.configChecked == true
} else := config_well_formed

default config_well_formed := false

config_well_formed if {
	whole(cfg.maxDepth)
	array_or_null(cfg.agents.allow)
	is_array(cfg.agents.deny)
	is_array(cfg.channels.nonInteractiveKinds)
	is_array(cfg.channels.untrustedKinds)
	whole_or_null(cfg.concurrency.total)
	whole_or_null(cfg.concurrency.user)
	whole_or_null(cfg.concurrency.channel)
	is_object(cfg.concurrency.roles)
	every caps in cfg.concurrency.roles {
		role_caps_valid(caps)
	}
	rate_buckets_valid(cfg.rate.interactive)
	rate_buckets_valid(cfg.rate.nonInteractive)
	is_object(cfg.rate.kinds)
	every buckets in cfg.rate.kinds {
		rate_buckets_valid(buckets)
	}
	positive(cfg.ttl.defaultSeconds)
	positive_or_null(cfg.ttl.maxSeconds)
	positive_or_null(cfg.ttl.maxNonInteractiveSeconds)
	is_object(cfg.ttl.maxByKind)
	every seconds in cfg.ttl.maxByKind {
		positive_or_null(seconds)
	}
	trees_well_formed
	pools_well_formed
	queue_well_formed
	string_list(cfg.buildPlacement.keywords)
	string_list(cfg.buildPlacement.phrases)
	string_list(cfg.buildPlacement.ignoredWords)
	is_object(cfg.buildPlacement.commands)
	every targets in cfg.buildPlacement.commands {
		string_list(targets)
	}
}

# Pools are optional: a data file from before them has none.
pools_well_formed if not "pools" in object.keys(cfg)

pools_well_formed if {
	is_object(cfg.pools)
	every key, value in cfg.pools {
		key == "sharedCaps"
		is_boolean(value)
	}
}

config_problems contains "pools must be an object" if {
	"pools" in object.keys(config_root)
	not is_object(config_root.pools)
}

config_problems contains concat("", ["pools.", key, " is not a setting (only sharedCaps, a boolean)"]) if {
	some key, _ in config_object(["pools"])
	key != "sharedCaps"
}

config_problems contains "pools.sharedCaps must be a boolean" if {
	some key, value in config_object(["pools"])
	key == "sharedCaps"
	not is_boolean(value)
}

# Trees are optional: a data file from before them has none.
trees_well_formed if not "trees" in object.keys(cfg)

trees_well_formed if {
	is_object(cfg.trees)
	every key, value in cfg.trees {
		tree_field_valid(key, value)
	}
}

tree_field_valid("windowSeconds", value) if positive(value)

tree_field_valid(key, value) if {
	key in {"maxChildren", "maxSpawns", "maxWorkerSeconds"}
	whole_or_null(value)
}

queue_well_formed if not "queue" in object.keys(cfg)

queue_well_formed if {
	is_object(cfg.queue)
	every key, value in cfg.queue {
		queue_field_valid(key, value)
	}
}

queue_field_valid(key, value) if {
	key in {"maxWaitSeconds", "maxWaitNonInteractiveSeconds"}
	whole(value)
	value <= 3600
}

queue_field_valid("priority", value) if {
	is_object(value)
	every kind, p in value {
		kind in {"interactive", "nonInteractive"}
		priority_valid(p)
	}
}

queue_field_valid("roles", value) if {
	is_object(value)
	every _, p in value {
		priority_valid(p)
	}
}

priority_valid(p) if {
	whole(p)
	p <= 255
}

role_caps_valid(caps) if {
	is_object(caps)
	every scope, cap in caps {
		scope in {"user", "channel"}
		whole_or_null(cap)
	}
}

rate_buckets_valid(buckets) if {
	is_object(buckets)
	every scope, bucket in buckets {
		scope in {"user", "channel"}
		valid_bucket(bucket)
	}
}

string_list(list) if {
	is_array(list)
	every item in list {
		is_string(item)
	}
}

# --- what is wrong, when config_valid fails ---

# cfg when it is an object, so that every check below sees a missing key rather than an error.
config_root := cfg if {
	is_object(cfg)
} else := {}

# Each entry: [path under config, accepted type names]. "null" means "no limit" / "any".
config_fields := [
	[["maxDepth"], {"number"}],
	[["agents", "allow"], {"array", "null"}],
	[["agents", "deny"], {"array"}],
	[["channels", "nonInteractiveKinds"], {"array"}],
	[["channels", "untrustedKinds"], {"array"}],
	[["concurrency", "total"], {"number", "null"}],
	[["concurrency", "user"], {"number", "null"}],
	[["concurrency", "channel"], {"number", "null"}],
	[["concurrency", "roles"], {"object"}],
	[["rate", "interactive"], {"object"}],
	[["rate", "nonInteractive"], {"object"}],
	[["rate", "kinds"], {"object"}],
	[["ttl", "defaultSeconds"], {"number"}],
	[["ttl", "maxSeconds"], {"number", "null"}],
	[["ttl", "maxNonInteractiveSeconds"], {"number", "null"}],
	[["ttl", "maxByKind"], {"object"}],
	[["buildPlacement", "keywords"], {"array"}],
	[["buildPlacement", "phrases"], {"array"}],
	[["buildPlacement", "ignoredWords"], {"array"}],
	[["buildPlacement", "commands"], {"object"}],
]

# JSON has no sets, so a set can only be the default: the key is missing.
config_problems contains problem if {
	some field in config_fields
	found := type_name(object.get(config_root, field[0], set()))
	not found in field[1]
	problem := type_problem(concat(".", field[0]), field[1], found)
}

type_problem(key, _, "set") := concat("", [key, " is missing"])

type_problem(key, types, found) := concat("", [key, " must be one of: ", concat(", ", types)]) if found != "set"

config_problems contains concat("", [concat(".", path), " must be a whole number >= 0"]) if {
	some path in [["maxDepth"], ["concurrency", "total"], ["concurrency", "user"], ["concurrency", "channel"]]
	not whole_or_null(object.get(config_root, path, null))
}

config_problems contains concat("", ["ttl.", name, " must be a whole number > 0"]) if {
	some name in ["defaultSeconds", "maxSeconds", "maxNonInteractiveSeconds"]
	not positive_or_null(object.get(config_root, ["ttl", name], null))
}

config_problems contains "trees must be an object" if {
	"trees" in object.keys(config_root)
	not is_object(config_root.trees)
}

config_problems contains concat("", ["trees.", key, problem]) if {
	some key, value in config_object(["trees"])
	not tree_field_valid(key, value)
	problem := tree_field_problem(key)
}

config_problems contains "queue must be an object" if {
	"queue" in object.keys(config_root)
	not is_object(config_root.queue)
}

config_problems contains concat("", ["queue.", key, queue_field_problem(key)]) if {
	some key, value in config_object(["queue"])
	not queue_field_valid(key, value)
}

queue_field_problem(key) := " must be a whole number of seconds from 0 to 3600" if key in {"maxWaitSeconds", "maxWaitNonInteractiveSeconds"}

queue_field_problem("priority") := " must be {interactive?, nonInteractive?}, each a whole number from 0 to 255"

queue_field_problem("roles") := " must map roles to priorities, each a whole number from 0 to 255"

queue_field_problem(key) := " is not a setting (maxWaitSeconds, maxWaitNonInteractiveSeconds, priority, roles)" if not key in {"maxWaitSeconds", "maxWaitNonInteractiveSeconds", "priority", "roles"}

tree_field_problem("windowSeconds") := " must be a whole number > 0"

tree_field_problem(key) := " must be a whole number >= 0 or null" if key in {"maxChildren", "maxSpawns", "maxWorkerSeconds"}

tree_field_problem(key) := " is not a setting (maxChildren, maxSpawns, maxWorkerSeconds, windowSeconds)" if not key in {"windowSeconds", "maxChildren", "maxSpawns", "maxWorkerSeconds"}

config_problems contains concat("", ["ttl.maxByKind.", kind, " must be a whole number > 0"]) if {
	some kind, seconds in config_object(["ttl", "maxByKind"])
	not positive_or_null(seconds)
}

config_problems contains concat("", [where, ".", name, " must be an object"]) if {
	some where in ["concurrency.roles", "rate.kinds"]
	some name, value in config_object(split(where, "."))
	not is_object(value)
}

config_problems contains concat("", ["concurrency.roles.", role, ".", scope, " must be a whole number >= 0 or null"]) if {
	some role, caps in config_object(["concurrency", "roles"])
	some scope, cap in object_or_empty(caps)
	not whole_or_null(cap)
}

config_problems contains concat("", ["concurrency.roles.", role, " may only set user and channel"]) if {
	some role, caps in config_object(["concurrency", "roles"])
	some scope, _ in object_or_empty(caps)
	not scope in {"user", "channel"}
}

config_problems contains concat("", ["rate.", where, " must hold {perMinute > 0, burst >= 1} or null"]) if {
	some where, bucket in rate_buckets_in_config
	not valid_bucket(bucket)
}

config_problems contains concat("", ["rate.", where, " may only set user and channel"]) if {
	some where, _ in rate_buckets_in_config
	not rate_scope_of(where) in {"user", "channel"}
}

rate_scope_of(where) := parts[count(parts) - 1] if parts := split(where, ".")

rate_buckets_in_config[concat(".", [group, scope])] := bucket if {
	some group in ["interactive", "nonInteractive"]
	some scope, bucket in config_object(["rate", group])
}

rate_buckets_in_config[concat(".", ["kinds", kind, scope])] := bucket if {
	some kind, buckets in config_object(["rate", "kinds"])
	some scope, bucket in object_or_empty(buckets)
}

config_problems contains concat("", ["buildPlacement.", list, "[", format_int(i, 10), "] must be a string"]) if {
	some list in ["keywords", "phrases", "ignoredWords"]
	some i, item in config_array(["buildPlacement", list])
	not is_string(item)
}

config_problems contains concat("", ["buildPlacement.commands.", name, " must be a list of strings"]) if {
	some name, targets in config_object(["buildPlacement", "commands"])
	not string_list(targets)
}

config_object(path) := value if {
	value := object.get(config_root, path, {})
	is_object(value)
} else := {}

config_array(path) := value if {
	value := object.get(config_root, path, [])
	is_array(value)
} else := []

object_or_empty(value) := value if {
	is_object(value)
} else := {}

whole(n) if {
	is_number(n)
	n >= 0
	floor(n) == n
}

whole_or_null(null)

whole_or_null(n) if whole(n)

positive(n) if {
	is_number(n)
	n > 0
	floor(n) == n
}

positive_or_null(null)

positive_or_null(n) if positive(n)

array_or_null(null)

array_or_null(list) if is_array(list)

valid_bucket(null)

valid_bucket(bucket) if {
	is_number(bucket.perMinute)
	bucket.perMinute > 0
	is_number(bucket.burst)
	bucket.burst >= 1
	floor(bucket.burst) == bucket.burst
}
