package spawngate.admission_test

test_egress_follows_profile if {
	d := decide({"resolved": {"backend": "local", "profile": "default"}})
	d.egress == "open"
	d.reasons == []
}

test_untrusted_channel_loses_network if {
	d := decide({"caller": webhook_caller})
	d.egress == "none"
	d.reasons == [{"code": "egress_tightened", "message": "egress tightened from proxy to none (untrusted channel kind)"}]
}

test_request_may_tighten_egress if {
	d := decide({"request": {"execution": {"backend": null, "profile": null, "egress": "none"}}})
	d.egress == "none"
	d.reasons == [{"code": "egress_tightened", "message": "egress tightened from proxy to none (requested by caller)"}]
}

test_request_cannot_loosen_egress if {
	d := decide({"request": {"execution": {"backend": null, "profile": null, "egress": "open"}}})
	d.egress == "proxy"
	d.reasons == []
}

test_request_and_channel_both_tighten if {
	d := decide({"caller": webhook_caller, "request": {"execution": {"backend": null, "profile": null, "egress": "none"}}, "resolved": {"backend": "local", "profile": "default"}})
	d.egress == "none"
	d.reasons[0].message == "egress tightened from open to none (requested by caller, untrusted channel kind)"
}

test_request_tightens_open_to_proxy if {
	d := decide({"request": {"execution": {"backend": null, "profile": null, "egress": "proxy"}}, "resolved": {"backend": "local", "profile": "default"}})
	d.egress == "proxy"
}

test_build_placement_uses_build_profile_egress if {
	d := decide({"request": {"task": "npm test"}})
	d.egress == "open"
}

test_ttl_from_profile if {
	d := decide({"resolved": {"profile": "build"}})
	d.ttlSeconds == 7200
	d.reasons == []
}

test_ttl_default_from_data if {
	decide({}).ttlSeconds == 3600
}

test_ttl_capped_by_global_max if {
	d := decide(profile_patch("k8s", "small", {"ttlSeconds": 99999}))
	d.ttlSeconds == 28800
	d.reasons == [{"code": "ttl_capped", "message": "ttl capped from 99999s to 28800s (global maximum)"}]
}

test_ttl_capped_for_non_interactive if {
	d := decide({"resolved": {"profile": "build"}, "caller": {"channel": {"id": "api-1", "kind": "api", "interactive": false}}})
	d.ttlSeconds == 3600
	d.reasons == [{"code": "ttl_capped", "message": "ttl capped from 7200s to 3600s (non-interactive caller)"}]
}

test_ttl_capped_by_channel_kind if {
	d := decide({"caller": cron_caller})
	d.ttlSeconds == 1800
	d.reasons == [{"code": "ttl_capped", "message": "ttl capped from 3600s to 1800s (channel kind cron)"}]
}

test_ttl_caps_null_mean_no_cap if {
	d := decide({"resolved": {"profile": "build"}, "caller": cron_caller}) with data.spawngate.admission.config as config_set("/ttl", {
		"defaultSeconds": 600, "maxSeconds": null, "maxNonInteractiveSeconds": null, "maxByKind": {"cron": null},
	})
	d.ttlSeconds == 7200
}
