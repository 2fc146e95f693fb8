# Shared fixtures for the admission tests: one catalog and one interactive caller that every
# test patches with object.union (a deep merge) to the case it needs. Config variants replace the
# whole config document: `with` on a path below it merges objects instead of replacing them.
package spawngate.admission_test

small_profile := {
	"class": "standard",
	"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": null, "memory": "2Gi"}, "gpu": 0},
	"egress": "proxy",
	"egressAllow": ["api.openai.com"],
	"allowedAgents": null,
	"interactiveOnly": false,
	"timeoutSeconds": null,
	"ttlSeconds": null,
	"maxConcurrent": {"profile": 10, "backend": null, "channel": 3, "user": 2},
}

build_profile := {
	"class": "build",
	"resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "8", "memory": "16Gi"}, "gpu": 0},
	"egress": "open",
	"allowedAgents": ["codex", "claude"],
	"interactiveOnly": false,
	"timeoutSeconds": 3600,
	"ttlSeconds": 7200,
	"maxConcurrent": {"profile": 2, "backend": null, "channel": null, "user": 1},
}

catalog := {"backends": {
	"k8s": {
		"type": "kubernetes",
		"namespace": "openclaw-agents",
		"defaultProfile": "small",
		"maxConcurrent": 20,
		"profiles": {"small": small_profile, "build": build_profile},
	},
	"local": {
		"type": "process",
		"namespace": null,
		"defaultProfile": null,
		"maxConcurrent": null,
		"profiles": {"default": object.union(small_profile, {
			"egress": "open",
			"maxConcurrent": {"profile": null, "channel": null, "user": null},
		})},
	},
}}

base_input := {
	"request": {"runtime": "acp", "agentId": "codex", "execution": null, "task": "fix the typo in README.md", "label": null},
	"caller": {
		"sessionKey": "agent:main:main",
		"parentSessionKey": null,
		"rootSessionKey": "agent:main:main",
		"depth": 0,
		"channel": {"id": "tg-1", "kind": "telegram", "interactive": true},
		"user": {"id": "alice", "roles": []},
	},
	"resolved": {"backend": "k8s", "profile": null, "source": "global"},
	"catalog": catalog,
	"usage": {
		"total": 0,
		"user": 0,
		"channel": 0,
		"backends": {},
		"profiles": {},
		"userProfiles": {},
		"channelProfiles": {},
		"children": 0,
		"recent": {"windowSeconds": 60, "user": 0, "channel": 0},
	},
	"now": "2026-01-01T00:00:00Z",
}

cron_caller := {"channel": {"id": "cron-nightly", "kind": "cron", "interactive": false}}

webhook_caller := {"channel": {"id": "hook-1", "kind": "webhook", "interactive": false}}

decide(patch) := d if {
	d := data.spawngate.admission.decision with input as object.union(base_input, patch)
}

codes(decision) := [r.code | some r in decision.reasons]

has_code(decision, code) if code in codes(decision)

denied_with(patch, code) if {
	d := decide(patch)
	d.allow == false
	has_code(d, code)
}

limit(decision, scope) := [l | some l in decision.limits.concurrency; l.scope == scope]

rate_for(decision, scope) := [r | some r in decision.limits.rate; r.scope == scope]

config_set(path, value) := json.patch(data.spawngate.admission.config, [{"op": "add", "path": path, "value": value}])

profile_patch(backend, profile, patch) := {"catalog": {"backends": {backend: {"profiles": {profile: patch}}}}}

interactive_only_small := profile_patch("k8s", "small", {"interactiveOnly": true})
