# Where the worker runs: the backend and profile that config selection resolved, possibly
# moved to the backend's build profile for build/test tasks, and whether the caller's agent,
# channel and depth may use it.
package spawngate.admission

agent_id := input.request.agentId

channel := input.caller.channel

backend_name := input.resolved.backend

backend := input.catalog.backends[backend_name]

# The caller named a profile itself: placement never second-guesses an explicit choice.
explicit_profile if input.request.execution.profile != null

non_interactive if channel.interactive == false

non_interactive if channel.kind in cfg.channels.nonInteractiveKinds

base_profile_name := input.resolved.profile if input.resolved.profile != null

base_profile_name := backend.defaultProfile if {
	input.resolved.profile == null
	backend.defaultProfile != null
}

base_profile := backend.profiles[base_profile_name]

build_task if {
	task := lower(input.request.task)
	some pattern in cfg.buildPlacement.taskPatterns
	regex.match(pattern, task)
}

build_profiles contains name if {
	some name, profile in backend.profiles
	profile.class == "build"
	agent_may_use(profile)
	not blocked_for_channel(profile)
}

placed_on_build if {
	not explicit_profile
	base_profile.class != "build"
	build_task
	count(build_profiles) > 0
}

profile_name := min(build_profiles) if placed_on_build

profile_name := base_profile_name if not placed_on_build

profile := backend.profiles[profile_name]

profile_key := concat("/", [backend_name, profile_name]) if profile

agent_may_use(p) if p.allowedAgents == null

agent_may_use(p) if agent_id in p.allowedAgents

blocked_for_channel(p) if {
	p.interactiveOnly
	non_interactive
}

# --- deny reasons: [rank, code, message]; rank fixes the order users see them in ---

deny contains [10, "backend_unresolved", "no execution backend was selected: name one in the request or configure a default backend"] if {
	backend_name == null
}

deny contains [11, "unknown_backend", sprintf("backend \"%s\" is not configured", [backend_name])] if {
	backend_name != null
	not backend
}

deny contains [12, "unknown_profile", msg] if {
	backend
	base_profile_name
	not base_profile
	msg := sprintf("profile \"%s\" is not defined on backend \"%s\"", [base_profile_name, backend_name])
}

deny contains [12, "unknown_profile", msg] if {
	backend
	not base_profile_name
	msg := sprintf("no profile was selected and backend \"%s\" has no defaultProfile", [backend_name])
}

deny contains [20, "agent_not_allowed", msg] if {
	not agent_may_use(profile)
	msg := sprintf("agent \"%s\" may not use profile \"%s\" (allowed: %s)", [agent_id, profile_key, concat(", ", sort(profile.allowedAgents))])
}

deny contains [20, "agent_not_allowed", sprintf("agent \"%s\" is not on the allow-list", [agent_id])] if {
	cfg.agents.allow != null
	not agent_id in cfg.agents.allow
}

deny contains [20, "agent_not_allowed", sprintf("agent \"%s\" is on the deny-list", [agent_id])] if {
	agent_id in cfg.agents.deny
}

deny contains [21, "interactive_only_profile", msg] if {
	blocked_for_channel(profile)
	msg := sprintf("profile \"%s\" is interactive-only and channel \"%s\" (kind %s) is not interactive", [profile_key, channel.id, channel.kind])
}

deny contains [22, "depth_exceeded", msg] if {
	input.caller.depth >= cfg.maxDepth
	msg := sprintf("caller is at spawn depth %d and spawns are allowed only below depth %d", [input.caller.depth, cfg.maxDepth])
}

info contains [1, "placed_on_build_profile", msg] if {
	placed_on_build
	msg := sprintf("build/test task placed on profile \"%s\" instead of \"%s/%s\"", [profile_key, backend_name, base_profile_name])
}
