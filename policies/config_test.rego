package spawngate.admission_test

import data.spawngate.admission

test_shipped_data_is_valid if {
	admission.config_valid
	count(admission.config_problems) == 0
	count(admission.build_vocabulary_problems) == 0
}

# config_valid decides and config_problems explains: breaking any field must fail the one and
# be named by the other.
test_config_valid_checks_every_field if {
	every field in admission.config_fields {
		pointer := concat("/", array.concat([""], field[0]))
		missing := json.remove(data.spawngate.admission.config, [pointer])
		not admission.config_valid with data.spawngate.admission.config as missing
		concat("", [concat(".", field[0]), " is missing"]) in admission.config_problems with data.spawngate.admission.config as missing
		mistyped := config_set(pointer, "x")
		not admission.config_valid with data.spawngate.admission.config as mistyped
		some problem in admission.config_problems with data.spawngate.admission.config as mistyped
		startswith(problem, concat(".", field[0]))
	}
}

test_invalid_config_without_a_message_still_denies if {
	d := decide({}) with data.spawngate.admission.config as "oops" with data.spawngate.admission.config_problems as set()
	d.allow == false
	d.reasons == [{"code": "policy_config_invalid", "message": "policy configuration is invalid"}]
}

config_denial(config) := [r.message | some r in d.reasons; r.code == "policy_config_invalid"] if {
	d := decide({}) with data.spawngate.admission.config as config
}

test_config_that_is_not_an_object_denies_everything if {
	msgs := config_denial("oops")
	count(msgs) == 20
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

test_build_vocabulary_must_be_strings if {
	cfg := json.patch(data.spawngate.admission.config, [
		{"op": "add", "path": "/buildPlacement/keywords/-", "value": 7},
		{"op": "add", "path": "/buildPlacement/phrases/-", "value": ["npm", "test"]},
		{"op": "add", "path": "/buildPlacement/commands/just", "value": "build"},
		{"op": "add", "path": "/buildPlacement/commands/task", "value": ["build", null]},
	])
	config_denial(cfg) == [
		"policy configuration is invalid: buildPlacement.commands.just must be a list of strings",
		"policy configuration is invalid: buildPlacement.commands.task must be a list of strings",
		"policy configuration is invalid: buildPlacement.keywords[14] must be a string",
		"policy configuration is invalid: buildPlacement.phrases[35] must be a string",
	]
}

vocabulary_problems(patch) := problems if {
	problems := admission.build_vocabulary_problems with data.spawngate.admission.config as json.patch(data.spawngate.admission.config, patch)
}

test_build_words_must_be_single_lower_case_words if {
	vocabulary_problems([
		{"op": "add", "path": "/buildPlacement/keywords/-", "value": "C++"},
		{"op": "add", "path": "/buildPlacement/keywords/-", "value": "make test"},
		{"op": "add", "path": "/buildPlacement/ignoredWords/-", "value": ";"},
		{"op": "add", "path": "/buildPlacement/ignoredWords/-", "value": "."},
	]) == {
		"buildPlacement.ignoredWords[4] must be a single lower-case word",
		"buildPlacement.ignoredWords[5] must be a single lower-case word",
		"buildPlacement.keywords[14] must be a single lower-case word",
		"buildPlacement.keywords[15] must be a single lower-case word",
	}
}

test_build_phrases_must_be_matchable if {
	vocabulary_problems([
		{"op": "add", "path": "/buildPlacement/phrases/-", "value": "npm  test"},
		{"op": "add", "path": "/buildPlacement/phrases/-", "value": "Run Tests"},
		{"op": "add", "path": "/buildPlacement/phrases/-", "value": "make; make install"},
		{"op": "add", "path": "/buildPlacement/phrases/-", "value": ""},
		{"op": "add", "path": "/buildPlacement/phrases/-", "value": "run the tests"},
	]) == {
		"buildPlacement.phrases[35] must be lower-case words separated by single spaces",
		"buildPlacement.phrases[36] must be lower-case words separated by single spaces",
		"buildPlacement.phrases[37] must be lower-case words separated by single spaces",
		"buildPlacement.phrases[38] must be lower-case words separated by single spaces",
		"buildPlacement.phrases[39] contains the ignored word the",
	}
}

test_build_commands_must_be_words if {
	vocabulary_problems([
		{"op": "add", "path": "/buildPlacement/commands/Ninja", "value": []},
		{"op": "add", "path": "/buildPlacement/commands/task", "value": ["build", "run-all"]},
	]) == {
		"buildPlacement.commands.Ninja must be a single lower-case word",
		"buildPlacement.commands.task[1] must be a single lower-case word",
	}
}

test_build_entries_must_not_be_ignored_words if {
	vocabulary_problems([
		{"op": "add", "path": "/buildPlacement/ignoredWords/-", "value": "tox"},
		{"op": "add", "path": "/buildPlacement/ignoredWords/-", "value": "make"},
	]) == {
		"buildPlacement.commands.make is an ignored word",
		"buildPlacement.keywords[1] is an ignored word",
	}
}

test_bad_vocabulary_does_not_deny if {
	decide({}).allow with data.spawngate.admission.config as config_set("/buildPlacement/keywords", ["Pytest", "c++"])
}

test_invalid_config_denies_even_a_plain_spawn if {
	cfg := json.patch(data.spawngate.admission.config, [{"op": "replace", "path": "/maxDepth", "value": "3"}])
	d := decide({}) with data.spawngate.admission.config as cfg
	d.allow == false
}

test_reasons_are_capped_at_64 if {
	caps := {sprintf("kind%d", [i]): -1 | some i in numbers.range(1, 80)}
	d := decide({}) with data.spawngate.admission.config as config_set("/ttl/maxByKind", caps)
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

# The engine sets data.spawngate.runtime.configChecked after the canary found the config valid.
test_checked_config_decides_alike if {
	every patch in catalog_cases {
		d := decide(patch) with data.spawngate.runtime.configChecked as true
		d == decide(patch)
	}
	admission.config_valid with data.spawngate.runtime.configChecked as true
}

test_broken_config_is_denied_without_the_flag if {
	broken := json.remove(data.spawngate.admission.config, ["maxDepth"])
	not admission.config_well_formed with data.spawngate.admission.config as broken
	not admission.config_valid with data.spawngate.admission.config as broken
	config_denial(broken) == ["policy configuration is invalid: maxDepth is missing"]
}

test_only_the_engines_flag_skips_the_check if {
	broken := json.remove(data.spawngate.admission.config, ["maxDepth"])
	every flag in ["true", 1, {}, false, null] {
		not admission.config_valid with data.spawngate.admission.config as broken with data.spawngate.runtime.configChecked as flag
	}
}

test_tree_settings_are_checked if {
	cfg := config_set("/trees", {"maxChildren": -1, "maxSpawns": 2.5, "windowSeconds": 0, "fanOut": 3})
	config_denial(cfg) == [
		"policy configuration is invalid: trees.fanOut is not a setting (maxChildren, maxSpawns, maxWorkerSeconds, windowSeconds)",
		"policy configuration is invalid: trees.maxChildren must be a whole number >= 0 or null",
		"policy configuration is invalid: trees.maxSpawns must be a whole number >= 0 or null",
		"policy configuration is invalid: trees.windowSeconds must be a whole number > 0",
	]
	config_denial(config_set("/trees", [])) == ["policy configuration is invalid: trees must be an object"]
}

test_queue_settings_are_checked if {
	cfg := config_set("/queue", {"maxWaitSeconds": 4000, "priority": {"interactive": 300, "batch": 1}, "roles": {"admin": -1}, "order": "fifo"})
	config_denial(cfg) == [
		"policy configuration is invalid: queue.maxWaitSeconds must be a whole number of seconds from 0 to 3600",
		"policy configuration is invalid: queue.order is not a setting (maxWaitSeconds, maxWaitNonInteractiveSeconds, priority, roles)",
		"policy configuration is invalid: queue.priority must be {interactive?, nonInteractive?}, each a whole number from 0 to 255",
		"policy configuration is invalid: queue.roles must map roles to priorities, each a whole number from 0 to 255",
	]
	config_denial(config_set("/queue", 5)) == ["policy configuration is invalid: queue must be an object"]
}
