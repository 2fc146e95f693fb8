package spawngate.admission_test

test_role_override_raises_user_cap if {
	d := decide({"caller": {"user": {"roles": ["admin"]}}})
	limit(d, "user") == [{"scope": "user", "key": "alice", "max": 16}]
}

test_most_generous_role_wins if {
	d := decide({"caller": {"user": {"roles": ["admin", "intern"]}}}) with data.spawngate.admission.config as config_set("/concurrency/roles", {"admin": {"user": 16}, "intern": {"user": 1}})
	limit(d, "user")[0].max == 16
}

test_lower_role_override_applies if {
	d := decide({"caller": {"user": {"roles": ["intern"]}}}) with data.spawngate.admission.config as config_set("/concurrency/roles", {"intern": {"user": 1, "channel": 2}})
	limit(d, "user")[0].max == 1
	limit(d, "channel")[0].max == 2
}

test_null_role_override_removes_cap if {
	d := decide({"caller": {"user": {"roles": ["admin", "sre"]}}}) with data.spawngate.admission.config as config_set("/concurrency/roles", {"admin": {"user": 16}, "sre": {"user": null}})
	limit(d, "user") == []
}

test_null_global_caps_are_omitted if {
	d := decide({}) with data.spawngate.admission.config as config_set("/concurrency", {"total": null, "user": null, "channel": null, "roles": {}})
	[l.scope | some l in d.limits.concurrency] == ["backend", "profile", "profile_user", "profile_channel", "parent"]
}

test_backend_cap_is_tighter_of_backend_and_profile if {
	d := decide(profile_patch("k8s", "small", {"maxConcurrent": {"backend": 5}}))
	limit(d, "backend") == [{"scope": "backend", "key": "k8s", "max": 5}]
}

test_profile_backend_cap_alone if {
	d := decide(object.union({"resolved": {"backend": "local", "profile": "default"}}, profile_patch("local", "default", {"maxConcurrent": {"backend": 7}})))
	limit(d, "backend") == [{"scope": "backend", "key": "local", "max": 7}]
}

test_catalog_caps_null_are_omitted if {
	d := decide({"resolved": {"backend": "local", "profile": "default"}})
	[l.scope | some l in d.limits.concurrency] == ["total", "user", "channel", "parent"]
}

test_concurrency_limit_total if {
	d := decide({"usage": {"total": 64}})
	d.reasons == [{"code": "concurrency_limit_total", "message": "spawngate as a whole already has 64 active workers; the limit is 64"}]
}

test_concurrency_limit_backend if {
	d := decide({"usage": {"backends": {"k8s": 20}}})
	d.reasons == [{"code": "concurrency_limit_backend", "message": "backend \"k8s\" already has 20 active workers; the limit is 20"}]
}

test_concurrency_limit_profile if {
	d := decide({"usage": {"profiles": {"k8s/small": 10}}})
	d.reasons == [{"code": "concurrency_limit_profile", "message": "profile \"k8s/small\" already has 10 active workers; the limit is 10"}]
}

test_concurrency_limit_user if {
	d := decide({"usage": {"user": 4}})
	d.reasons == [{"code": "concurrency_limit_user", "message": "user \"alice\" already has 4 active workers; the limit is 4"}]
}

test_concurrency_limit_channel if {
	d := decide({"usage": {"channel": 8}})
	d.reasons == [{"code": "concurrency_limit_channel", "message": "channel \"tg-1\" already has 8 active workers; the limit is 8"}]
}

test_concurrency_limit_profile_user if {
	d := decide({"usage": {"userProfiles": {"k8s/small": 2}}})
	d.reasons == [{"code": "concurrency_limit_profile_user", "message": "user \"alice\" on profile \"k8s/small\" already has 2 active workers; the limit is 2"}]
}

test_concurrency_limit_profile_channel if {
	d := decide({"usage": {"channelProfiles": {"k8s/small": 3}}})
	d.reasons == [{"code": "concurrency_limit_profile_channel", "message": "channel \"tg-1\" on profile \"k8s/small\" already has 3 active workers; the limit is 3"}]
}

test_usage_below_every_cap_is_allowed if {
	decide({"usage": {
		"total": 63, "user": 3, "channel": 7, "backends": {"k8s": 19}, "profiles": {"k8s/small": 9},
		"userProfiles": {"k8s/small": 1}, "channelProfiles": {"k8s/small": 2},
	}}).allow
}

test_usage_on_other_profile_does_not_count if {
	decide({"usage": {"profiles": {"k8s/build": 2}, "userProfiles": {"k8s/build": 1}}}).allow
}

test_caps_follow_build_placement if {
	d := decide({"request": {"task": "cargo test"}, "usage": {"userProfiles": {"k8s/build": 1}}})
	d.profile == "build"
	d.reasons == [{"code": "concurrency_limit_profile_user", "message": "user \"alice\" on profile \"k8s/build\" already has 1 active workers; the limit is 1"}]
}

test_interactive_callers_have_no_rate_limits if {
	decide({}).limits.rate == []
}

test_non_interactive_callers_get_default_buckets if {
	d := decide({"caller": {"channel": {"id": "api-1", "kind": "api", "interactive": false}}})
	d.limits.rate == [
		{"scope": "user", "key": "api/alice", "perMinute": 6, "burst": 3},
		{"scope": "channel", "key": "api-1", "perMinute": 12, "burst": 4},
	]
}

test_cron_gets_stricter_buckets if {
	d := decide({"caller": cron_caller})
	d.limits.rate == [
		{"scope": "user", "key": "cron/alice", "perMinute": 2, "burst": 1},
		{"scope": "channel", "key": "cron-nightly", "perMinute": 2, "burst": 1},
	]
}

test_kind_override_null_disables_a_bucket if {
	d := decide({"caller": cron_caller}) with data.spawngate.admission.config as config_set("/rate/kinds/cron", {"channel": null})
	d.limits.rate == [{"scope": "user", "key": "cron/alice", "perMinute": 6, "burst": 3}]
}

test_kind_override_applies_to_interactive_kinds if {
	d := decide({}) with data.spawngate.admission.config as config_set("/rate/kinds/telegram", {"user": {"perMinute": 30, "burst": 10}})
	d.limits.rate == [{"scope": "user", "key": "telegram/alice", "perMinute": 30, "burst": 10}]
}

test_interactive_defaults_come_from_data if {
	d := decide({}) with data.spawngate.admission.config as config_set("/rate/interactive", {"channel": {"perMinute": 60, "burst": 20}})
	d.limits.rate == [{"scope": "channel", "key": "tg-1", "perMinute": 60, "burst": 20}]
}

test_user_bucket_is_keyed_by_channel_kind_and_user if {
	cron := decide({"caller": cron_caller})
	api := decide({"caller": {"channel": {"id": "cron-nightly", "kind": "api", "interactive": false}}})
	[l.key | some l in cron.limits.rate; l.scope == "user"] == ["cron/alice"]
	[l.key | some l in api.limits.rate; l.scope == "user"] == ["api/alice"]

	# the channel bucket stays keyed by the channel id alone
	[l.key | some l in cron.limits.rate; l.scope == "channel"] == ["cron-nightly"]
	[l.key | some l in api.limits.rate; l.scope == "channel"] == ["cron-nightly"]
}

test_user_bucket_key_keeps_a_slash_in_the_user_id if {
	d := decide({"caller": object.union(cron_caller, {"user": {"id": "team/alice"}})})
	[l.key | some l in d.limits.rate; l.scope == "user"] == ["cron/team/alice"]
}

test_user_concurrency_key_is_still_the_user_id if {
	d := decide({"caller": cron_caller})
	limit(d, "user") == [{"scope": "user", "key": "alice", "max": 4}]
}

test_fan_out_caps_the_callers_live_children if {
	d := decide({})
	limit(d, "parent") == [{"scope": "parent", "key": "agent:main:main", "max": 8}]
	e := decide({"usage": {"children": 8}})
	e.reasons == [{"code": "concurrency_limit_parent", "message": "session \"agent:main:main\" already has 8 active workers; the limit is 8"}]
}

test_fan_out_cap_null_is_omitted if {
	d := decide({}) with data.spawngate.admission.config as config_set("/trees/maxChildren", null)
	limit(d, "parent") == []
}

test_no_tree_budget_without_a_tree_cap if {
	d := decide({})
	not "tree" in object.keys(d.limits)
}

test_tree_budget_names_the_root_and_its_caps if {
	d := decide({"caller": {"sessionKey": "agent:main:subagent:b", "rootSessionKey": "agent:main:main", "depth": 1}}) with data.spawngate.admission.config as config_set("/trees", {"maxSpawns": 20, "maxWorkerSeconds": 7200})
	d.allow
	d.limits.tree == {"root": "agent:main:main", "maxSpawns": 20, "maxWorkerSeconds": 7200, "windowSeconds": 86400}
	limit(d, "parent") == []
}

test_tree_root_defaults_to_the_callers_session if {
	d := decide({}) with data.spawngate.admission.config as config_set("/trees/maxSpawns", 5)
	d.limits.tree == {"root": "agent:main:main", "maxSpawns": 5, "maxWorkerSeconds": null, "windowSeconds": 86400}
}

test_config_without_trees_is_valid_and_sets_no_budget if {
	cfg := json.remove(data.spawngate.admission.config, ["trees"])
	d := decide({}) with data.spawngate.admission.config as cfg
	d.allow
	limit(d, "parent") == []
	not "tree" in object.keys(d.limits)
}

# A tree setting the config sets wins over its default, null included; the rest keep theirs.
test_tree_settings_set_to_null_override_the_defaults if {
	d := decide({}) with data.spawngate.admission.config as config_set("/trees", {"maxSpawns": 3, "windowSeconds": null, "maxChildren": 2})
	d.limits.tree == {"root": "agent:main:main", "maxSpawns": 3, "maxWorkerSeconds": null, "windowSeconds": null}
	limit(d, "parent") == [{"scope": "parent", "key": "agent:main:main", "max": 2}]
}

# trees that is not an object is a config problem; the limits are then worked out from the defaults.
test_trees_that_are_not_an_object_leave_the_defaults if {
	d := decide({}) with data.spawngate.admission.config as config_set("/trees", ["maxSpawns", 3])
	has_code(d, "policy_config_invalid")
	limit(d, "parent") == []
	not "tree" in object.keys(d.limits)
}

test_no_wait_unless_the_caller_asks if {
	not "wait" in object.keys(decide({}))
	d := decide({"request": {"waitSeconds": 20}})
	d.wait == {"maxSeconds": 20, "priority": 10}
}

test_wait_is_capped_by_the_policy if {
	decide({"request": {"waitSeconds": 600}}).wait.maxSeconds == 60
}

test_non_interactive_callers_do_not_wait_by_default if {
	not "wait" in object.keys(decide({"request": {"waitSeconds": 20}, "caller": cron_caller}))
	d := decide({"request": {"waitSeconds": 20}, "caller": cron_caller}) with data.spawngate.admission.config as config_set("/queue/maxWaitNonInteractiveSeconds", 5)
	d.wait == {"maxSeconds": 5, "priority": 0}
}

test_the_most_generous_role_sets_the_priority if {
	d := decide({"request": {"waitSeconds": 5}, "caller": {"user": {"roles": ["admin", "intern"]}}}) with data.spawngate.admission.config as config_set("/queue/roles", {"admin": 20, "intern": 1})
	d.wait.priority == 20
}

test_a_denied_spawn_carries_its_wait_terms if {
	d := decide({"request": {"waitSeconds": 30}, "usage": {"user": 4}})
	d.allow == false
	codes(d) == ["concurrency_limit_user"]
	d.wait == {"maxSeconds": 30, "priority": 10}
}

test_config_without_queue_lets_nobody_wait if {
	cfg := json.remove(data.spawngate.admission.config, ["queue"])
	not "wait" in object.keys(decide({"request": {"waitSeconds": 30}})) with data.spawngate.admission.config as cfg
}

pool_caller_patch := {"caller": {"channel": {"id": "spawngate-pool:k8s/small", "kind": "pool", "interactive": false}, "user": {"id": "spawngate-pool", "roles": ["spawngate-pool"]}}}

test_pool_spawns_count_only_against_their_own_caps if {
	d := decide(object.union(pool_caller_patch, {"usage": {"total": 64, "backends": {"k8s": 20}, "profiles": {"k8s/small": 10}}}))
	d.allow
	[l.scope | some l in d.limits.concurrency] == ["user", "parent"]
	limit(d, "user") == [{"scope": "user", "key": "spawngate-pool", "max": 64}]
	rate_for(d, "user") == []
	rate_for(d, "channel") == []
}

test_pool_spawns_in_shared_caps_when_the_config_says_so if {
	d := decide(object.union(pool_caller_patch, {"usage": {"total": 64}})) with data.spawngate.admission.config as config_set("/pools/sharedCaps", true)
	has_code(d, "concurrency_limit_total")
	[l.scope | some l in d.limits.concurrency] == ["total", "backend", "profile", "user", "profile_user", "profile_channel", "parent"]
}

test_a_pool_channel_without_the_pool_role_is_an_ordinary_caller if {
	d := decide({"caller": {"channel": {"kind": "pool"}}, "usage": {"total": 64}})
	has_code(d, "concurrency_limit_total")
}

test_pools_config_problems if {
	"pools.sharedCaps must be a boolean" in data.spawngate.admission.config_problems with data.spawngate.admission.config as config_set("/pools/sharedCaps", "yes")
	"pools.size is not a setting (only sharedCaps, a boolean)" in data.spawngate.admission.config_problems with data.spawngate.admission.config as config_set("/pools/size", 2)
	"pools must be an object" in data.spawngate.admission.config_problems with data.spawngate.admission.config as config_set("/pools", true)
}

test_config_without_pools_is_valid if {
	cfg := json.remove(data.spawngate.admission.config, ["pools"])
	d := decide(pool_caller_patch) with data.spawngate.admission.config as cfg
	d.allow
	limit(d, "total") == []
}
