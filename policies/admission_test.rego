package spawngate.admission_test

test_plain_task_is_allowed_on_default_profile if {
	decide({}) == {
		"allow": true,
		"backend": "k8s",
		"profile": "small",
		"egress": "proxy",
		"egressAllow": ["api.openai.com"],
		"ttlSeconds": 3600,
		"limits": {
			"concurrency": [
				{"scope": "total", "key": "*", "max": 64},
				{"scope": "backend", "key": "k8s", "max": 20},
				{"scope": "profile", "key": "k8s/small", "max": 10},
				{"scope": "user", "key": "alice", "max": 4},
				{"scope": "channel", "key": "tg-1", "max": 8},
				{"scope": "profile_user", "key": "k8s/small/alice", "max": 2},
				{"scope": "profile_channel", "key": "k8s/small/tg-1", "max": 3},
				{"scope": "parent", "key": "agent:main:main", "max": 8},
			],
			"rate": [],
		},
		"reasons": [],
	}
}

test_deny_lists_every_reason_in_stable_order if {
	d := decide({
		"request": {"agentId": "rogue"},
		"caller": object.union(cron_caller, {"depth": 5}),
		"usage": {"total": 64, "user": 9},
		"catalog": interactive_only_small.catalog,
	}) with data.spawngate.admission.config as config_set("/agents/deny", ["rogue"])
	d.allow == false
	codes(d) == [
		"agent_not_allowed",
		"interactive_only_profile",
		"depth_exceeded",
		"concurrency_limit_total",
		"concurrency_limit_user",
	]
}

test_deny_keeps_known_fields_and_nulls_the_rest if {
	d := decide({"resolved": {"backend": "nope"}})
	d == {
		"allow": false,
		"backend": null,
		"profile": null,
		"egress": null,
		"egressAllow": [],
		"ttlSeconds": null,
		"limits": {"concurrency": [{"scope": "total", "key": "*", "max": 64}, {"scope": "user", "key": "alice", "max": 4}, {"scope": "channel", "key": "tg-1", "max": 8}, {"scope": "parent", "key": "agent:main:main", "max": 8}], "rate": []},
		"reasons": [{"code": "unknown_backend", "message": "backend \"nope\" is not configured"}],
	}
}

test_egress_allow_follows_the_profile_only_under_proxy if {
	decide({}).egressAllow == ["api.openai.com"]
	decide({"request": {"execution": {"backend": null, "profile": null, "egress": "none"}}}).egressAllow == []
	decide({"catalog": {"backends": {"k8s": {"profiles": {"small": {"egressAllow": ["*.anthropic.com", "api.openai.com:443"]}}}}}}).egressAllow == ["*.anthropic.com", "api.openai.com:443"]
}

test_deny_without_a_profile_reports_no_egress_even_if_requested if {
	d := decide({"resolved": {"backend": "nope"}, "caller": webhook_caller, "request": {"execution": {"backend": null, "profile": null, "egress": "none"}}})
	d.allow == false
	d.egress == null
	d.ttlSeconds == null
}

test_deny_on_known_profile_still_reports_placement_fields if {
	d := decide({"caller": {"depth": 3}})
	d.allow == false
	d.backend == "k8s"
	d.profile == "small"
	d.egress == "proxy"
	d.ttlSeconds == 3600
}

test_info_reasons_only_on_allow if {
	d := decide({"request": {"task": "npm test", "agentId": "codex"}, "caller": {"depth": 4}})
	d.allow == false
	codes(d) == ["depth_exceeded"]
}
