package spawngate.admission_test

import data.spawngate.admission

test_shipped_data_is_valid if {
	count(admission.config_problems) == 0
}

config_denial(config) := [r.message | some r in d.reasons; r.code == "policy_config_invalid"] if {
	d := decide({}) with data.spawngate.admission.config as config
}

test_config_that_is_not_an_object_denies_everything if {
	msgs := config_denial("oops")
	count(msgs) == 17
	"policy configuration is invalid: maxDepth is missing" in msgs
}

test_missing_key if {
	cfg := json.remove(data.spawngate.admission.config, ["ttl/defaultSeconds"])
	config_denial(cfg) == ["policy configuration is invalid: ttl.defaultSeconds is missing"]
}

test_wrong_type if {
	cfg := json.patch(data.spawngate.admission.config, [{"op": "replace", "path": "/agents/allow", "value": "codex"}])
	config_denial(cfg) == ["policy configuration is invalid: agents.allow must be one of: array, null"]
}

test_caps_must_be_whole_numbers if {
	cfg := json.patch(data.spawngate.admission.config, [{"op": "replace", "path": "/concurrency/user", "value": 1.5}])
	config_denial(cfg) == ["policy configuration is invalid: concurrency.user must be a whole number >= 0"]
}

test_ttl_must_be_positive if {
	cfg := json.patch(data.spawngate.admission.config, [
		{"op": "replace", "path": "/ttl/maxSeconds", "value": 0},
		{"op": "replace", "path": "/ttl/maxByKind/cron", "value": -5},
	])
	config_denial(cfg) == [
		"policy configuration is invalid: ttl.maxByKind.cron must be a whole number > 0",
		"policy configuration is invalid: ttl.maxSeconds must be a whole number > 0",
	]
}

test_role_overrides_are_checked if {
	cfg := json.patch(data.spawngate.admission.config, [{"op": "replace", "path": "/concurrency/roles", "value": {"admin": {"user": -1, "total": 5}}}])
	config_denial(cfg) == [
		"policy configuration is invalid: concurrency.roles.admin may only set user and channel",
		"policy configuration is invalid: concurrency.roles.admin.user must be a whole number >= 0 or null",
	]
}

test_rate_buckets_are_checked if {
	cfg := json.patch(data.spawngate.admission.config, [
		{"op": "replace", "path": "/rate/nonInteractive/user", "value": {"perMinute": 0, "burst": 1}},
		{"op": "add", "path": "/rate/kinds/cron/session", "value": null},
	])
	config_denial(cfg) == [
		"policy configuration is invalid: rate.kinds.cron.session may only set user and channel",
		"policy configuration is invalid: rate.nonInteractive.user must hold {perMinute > 0, burst >= 1} or null",
	]
}

test_task_patterns_must_compile if {
	cfg := json.patch(data.spawngate.admission.config, [{"op": "add", "path": "/buildPlacement/taskPatterns/-", "value": "(unclosed"}])
	config_denial(cfg) == ["policy configuration is invalid: buildPlacement.taskPatterns[12] is not a valid regular expression"]
}

test_invalid_config_denies_even_a_plain_spawn if {
	cfg := json.patch(data.spawngate.admission.config, [{"op": "replace", "path": "/maxDepth", "value": "3"}])
	d := decide({}) with data.spawngate.admission.config as cfg
	d.allow == false
}

test_reasons_are_capped_at_64 if {
	patterns := [sprintf("(bad%d", [i]) | some i in numbers.range(1, 80)]
	d := decide({}) with data.spawngate.admission.config as config_set("/buildPlacement/taskPatterns", patterns)
	count(d.reasons) == 64
}

test_role_and_kind_entries_must_be_objects if {
	cfg := json.patch(data.spawngate.admission.config, [
		{"op": "add", "path": "/concurrency/roles/ops", "value": 5},
		{"op": "add", "path": "/rate/kinds/email", "value": null},
	])
	config_denial(cfg) == [
		"policy configuration is invalid: concurrency.roles.ops must be an object",
		"policy configuration is invalid: rate.kinds.email must be an object",
	]
}
