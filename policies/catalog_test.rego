package spawngate.admission_test

# The engine sends inputs without a catalog and loads it into data.spawngate.runtime.catalog once
# per config; opa eval, opa test and a REST sidecar send it in the input. Both must decide alike.
decide_from_data(patch) := d if {
	full := object.union(base_input, patch)
	d := data.spawngate.admission.decision with input as object.remove(full, {"catalog"})
		with data.spawngate.runtime.catalog as full.catalog
}

catalog_cases := [
	{},
	{"request": {"task": "npm test"}},
	{"request": {"task": "npm test", "agentId": "gemini"}},
	{"resolved": {"backend": "local", "profile": "default"}},
	{"resolved": {"backend": "local"}},
	{"resolved": {"backend": "gpu-farm"}},
	{"resolved": {"profile": "huge"}},
	{"resolved": {"profile": "build"}, "request": {"agentId": "gemini"}},
	{"caller": cron_caller},
	{"caller": webhook_caller},
	object.union({"caller": cron_caller}, interactive_only_small),
	{"usage": {"backends": {"k8s": 20}, "profiles": {"k8s/small": 10}}},
	{"usage": {"userProfiles": {"k8s/small": 2}, "channelProfiles": {"k8s/small": 3}}},
	object.union({"request": {"task": "npm test"}}, profile_patch("k8s", "a_build", build_profile)),
]

test_catalog_from_data_decides_like_catalog_in_input if {
	every patch in catalog_cases {
		decide_from_data(patch) == decide(patch)
	}
}

test_catalog_in_input_wins_over_data if {
	d := data.spawngate.admission.decision with input as base_input
		with data.spawngate.runtime.catalog as {"backends": {}}
	d == decide({})
	d.allow
}

test_no_catalog_anywhere_denies if {
	d := data.spawngate.admission.decision with input as object.remove(base_input, {"catalog"})
	d.allow == false
	d.backend == null
	d.reasons == [{"code": "unknown_backend", "message": "backend \"k8s\" is not configured"}]
}
