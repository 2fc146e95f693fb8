package spawngate.admission_test

test_backend_unresolved if {
	d := decide({"resolved": {"backend": null}})
	d.allow == false
	d.reasons == [{"code": "backend_unresolved", "message": "no execution backend was selected: name one in the request or configure a default backend"}]
}

test_unknown_backend if denied_with({"resolved": {"backend": "gpu-farm"}}, "unknown_backend")

test_unknown_profile_by_name if {
	d := decide({"resolved": {"profile": "huge"}})
	d.reasons == [{"code": "unknown_profile", "message": "profile \"huge\" is not defined on backend \"k8s\""}]
}

test_unknown_profile_without_default if {
	d := decide({"resolved": {"backend": "local"}})
	d.reasons == [{"code": "unknown_profile", "message": "no profile was selected and backend \"local\" has no defaultProfile"}]
}

test_resolved_profile_wins_over_default if {
	d := decide({"resolved": {"backend": "local", "profile": "default"}})
	d.allow
	d.profile == "default"
}

test_agent_not_allowed_on_profile if {
	d := decide({"resolved": {"profile": "build"}, "request": {"agentId": "gemini"}})
	d.reasons == [{"code": "agent_not_allowed", "message": "agent \"gemini\" may not use profile \"k8s/build\" (allowed: claude, codex)"}]
}

test_agent_allowed_on_listed_profile if decide({"resolved": {"profile": "build"}}).allow

test_global_allow_list if {
	d := decide({"request": {"agentId": "gemini"}}) with data.spawngate.admission.config as config_set("/agents/allow", ["codex"])
	d.reasons == [{"code": "agent_not_allowed", "message": "agent \"gemini\" is not on the allow-list"}]
	decide({}).allow with data.spawngate.admission.config as config_set("/agents/allow", ["codex"])
}

test_global_deny_list if {
	d := decide({}) with data.spawngate.admission.config as config_set("/agents/deny", ["codex"])
	d.reasons == [{"code": "agent_not_allowed", "message": "agent \"codex\" is on the deny-list"}]
}

test_interactive_only_profile_denies_cron if {
	d := decide(object.union({"caller": cron_caller}, interactive_only_small))
	d.reasons == [{"code": "interactive_only_profile", "message": "profile \"k8s/small\" is interactive-only and channel \"cron-nightly\" (kind cron) is not interactive"}]
}

test_interactive_only_profile_allows_chat if {
	decide(interactive_only_small).allow
}

test_non_interactive_flag_alone_counts if {
	denied_with(object.union({"caller": {"channel": {"interactive": false}}}, interactive_only_small), "interactive_only_profile")
}

test_non_interactive_kind_alone_counts if {
	denied_with(object.union({"caller": {"channel": {"kind": "unknown", "interactive": true}}}, interactive_only_small), "interactive_only_profile")
}

test_depth_exceeded if {
	d := decide({"caller": {"depth": 3}})
	d.reasons == [{"code": "depth_exceeded", "message": "caller is at spawn depth 3 and spawns are allowed only below depth 3"}]
}

test_depth_below_max_allowed if decide({"caller": {"depth": 2}}).allow

test_depth_max_comes_from_data if denied_with({"caller": {"depth": 1}}, "depth_exceeded") with data.spawngate.admission.config as config_set("/maxDepth", 1)

build_tasks := [
	"Please run the full test suite and fix what fails",
	"run tests",
	"npm test",
	"npm run build then report",
	"pnpm test",
	"cargo build --release",
	"cargo test -p core",
	"`make`",
	"make",
	"run make -j8",
	"make test",
	"go test ./...",
	"pytest -x tests/",
	"compile the project",
	"figure out why CI is red",
	"mvn package",
	"make -j8 all",
	"make -j 4",
	"npm run build && npm test",
	"Re-run the whole testsuite",
	"EXECUTE THE TESTS",
	"cd web; make",
	"(make install)",
	"go vet ./...",
	"pip install pytest-cov and run it",
	"why does compilation take so long?",
	"bun run build",
	"./gradlew assemble",
]

plain_tasks := [
	"fix the typo in README.md",
	"make the button blue",
	"make sure the docs mention the flag",
	"write a test plan for the login page",
	"explain what the circuit breaker does",
	"summarize the latest issues",
	"update the makefile",
	"testing the idea is cheap",
	"make the tests easier to read",
	"run the linter",
	"explain npm testing conventions",
	"rename the cicd folder",
	"we should go and test it manually",
	"make -j8 the default",
]

test_build_tasks_are_placed_on_build_profile if {
	every task in build_tasks {
		d := decide({"request": {"task": task}})
		d.allow
		d.profile == "build"
		d.reasons[0] == {"code": "placed_on_build_profile", "message": "build/test task placed on profile \"k8s/build\" instead of \"k8s/small\""}
	}
}

test_plain_tasks_stay_on_default_profile if {
	every task in plain_tasks {
		d := decide({"request": {"task": task}})
		d.allow
		d.profile == "small"
		d.reasons == []
	}
}

test_build_phrase_late_in_a_long_task_is_found if {
	prose := concat(" ", [sentence | some _ in numbers.range(1, 100); sentence := "Look at why the session cookie is dropped after the redirect."])
	decide({"request": {"task": concat(" ", [prose, "Then run the whole test suite."])}}).profile == "build"
	decide({"request": {"task": prose}}).profile == "small"
}

# An empty list, or one that is not a list (a config problem), finds nothing; the other lists still count.
test_build_lists_may_be_empty_or_not_lists if {
	config := json.patch(data.spawngate.admission.config, [
		{"op": "replace", "path": "/buildPlacement/keywords", "value": []},
		{"op": "replace", "path": "/buildPlacement/phrases", "value": "npm test"},
	])
	decide({"request": {"task": "npm test"}}).profile == "small" with data.spawngate.admission.config as config
	decide({"request": {"task": "make test"}}).profile == "build" with data.spawngate.admission.config as config
	no_commands := json.patch(config, [{"op": "replace", "path": "/buildPlacement/commands", "value": {}}])
	decide({"request": {"task": "make test"}}).profile == "small" with data.spawngate.admission.config as no_commands
}

test_explicit_profile_is_never_moved if {
	d := decide({"request": {"task": "npm test", "execution": {"backend": "k8s", "profile": "small", "egress": null}}, "resolved": {"profile": "small", "source": "explicit"}})
	d.profile == "small"
}

test_explicit_backend_only_still_gets_placement if {
	d := decide({"request": {"task": "npm test", "execution": {"backend": "k8s", "profile": null, "egress": null}}, "resolved": {"source": "explicit"}})
	d.profile == "build"
}

test_build_profile_needs_agent_permission if {
	d := decide({"request": {"task": "npm test", "agentId": "gemini"}})
	d.allow
	d.profile == "small"
}

test_build_profile_must_accept_the_channel if {
	d := decide(object.union({"request": {"task": "npm test"}, "caller": cron_caller}, profile_patch("k8s", "build", {"interactiveOnly": true})))
	d.profile == "small"
}

test_no_build_profile_on_backend if {
	d := decide({"request": {"task": "npm test"}, "resolved": {"backend": "local", "profile": "default"}})
	d.profile == "default"
	d.reasons == []
}

test_resolved_build_profile_is_kept_without_info if {
	d := decide({"request": {"task": "npm test"}, "resolved": {"profile": "build", "source": "binding"}})
	d.profile == "build"
	d.reasons == []
}

test_first_build_profile_by_name_is_chosen if {
	d := decide(object.union({"request": {"task": "npm test"}}, profile_patch("k8s", "a_build", build_profile)))
	d.profile == "a_build"
}

test_non_build_resolved_profile_is_never_upgraded if {
	d := decide({"resolved": {"profile": "small", "source": "agent"}})
	d.profile == "small"
}
