# Tunables live in data (policies/data.json → data.spawngate.admission.config) so that a
# security team changes numbers and lists without touching rules. A config that is missing
# or malformed denies every spawn (policy_config_invalid) instead of silently relaxing a rule.
package spawngate.admission

default cfg := {}

cfg := data.spawngate.admission.config

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
	[["buildPlacement", "taskPatterns"], {"array"}],
]

# object.get with two different defaults agrees only when the key exists, even if its value is null.
config_has(path) if object.get(cfg, path, 0) == object.get(cfg, path, 1)

config_problems contains sprintf("%s is missing", [concat(".", field[0])]) if {
	some field in config_fields
	not config_has(field[0])
}

config_problems contains sprintf("%s must be one of: %s", [concat(".", field[0]), concat(", ", sort(field[1]))]) if {
	some field in config_fields
	config_has(field[0])
	not type_name(object.get(cfg, field[0], null)) in field[1]
}

config_problems contains sprintf("%s must be a whole number >= 0", [concat(".", path)]) if {
	some path in [["maxDepth"], ["concurrency", "total"], ["concurrency", "user"], ["concurrency", "channel"]]
	not whole_or_null(object.get(cfg, path, null))
}

config_problems contains sprintf("ttl.%s must be a whole number > 0", [name]) if {
	some name in ["defaultSeconds", "maxSeconds", "maxNonInteractiveSeconds"]
	not positive_or_null(object.get(cfg.ttl, name, null))
}

config_problems contains sprintf("ttl.maxByKind.%s must be a whole number > 0", [kind]) if {
	some kind, seconds in cfg.ttl.maxByKind
	not positive_or_null(seconds)
}

config_problems contains sprintf("%s.%s must be an object", [where, name]) if {
	some where in ["concurrency.roles", "rate.kinds"]
	some name, value in object.get(cfg, split(where, "."), {})
	not is_object(value)
}

config_problems contains sprintf("concurrency.roles.%s.%s must be a whole number >= 0 or null", [role, scope]) if {
	some role, caps in cfg.concurrency.roles
	some scope, cap in caps
	not whole_or_null(cap)
}

config_problems contains sprintf("concurrency.roles.%s may only set user and channel", [role]) if {
	some role, caps in cfg.concurrency.roles
	some scope, _ in caps
	not scope in {"user", "channel"}
}

config_problems contains sprintf("rate.%s must hold {perMinute > 0, burst >= 1} or null", [where]) if {
	some where, bucket in rate_buckets_in_config
	not valid_bucket(bucket)
}

config_problems contains sprintf("buildPlacement.taskPatterns[%d] is not a valid regular expression", [i]) if {
	some i, pattern in cfg.buildPlacement.taskPatterns
	not valid_pattern(pattern)
}

config_problems contains sprintf("rate.%s may only set user and channel", [where]) if {
	some where, _ in rate_buckets_in_config
	not rate_scope_of(where) in {"user", "channel"}
}

rate_scope_of(where) := parts[count(parts) - 1] if parts := split(where, ".")

rate_buckets_in_config[sprintf("%s.%s", [group, scope])] := bucket if {
	some group in ["interactive", "nonInteractive"]
	some scope, bucket in cfg.rate[group]
}

rate_buckets_in_config[sprintf("kinds.%s.%s", [kind, scope])] := bucket if {
	some kind, buckets in cfg.rate.kinds
	some scope, bucket in buckets
}

whole_or_null(null)

whole_or_null(n) if {
	is_number(n)
	n >= 0
	floor(n) == n
}

positive_or_null(null)

positive_or_null(n) if {
	is_number(n)
	n > 0
	floor(n) == n
}

valid_bucket(null)

valid_bucket(bucket) if {
	is_number(bucket.perMinute)
	bucket.perMinute > 0
	is_number(bucket.burst)
	bucket.burst >= 1
	floor(bucket.burst) == bucket.burst
}

valid_pattern(pattern) if {
	is_string(pattern)
	regex.is_valid(pattern)
}
