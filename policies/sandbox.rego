# Network egress and lifetime of the worker. Both can only get stricter than the profile says:
# untrusted channels lose the network, a request may ask for less but never for more, and the
# TTL is capped per channel kind and for non-interactive callers.
package spawngate.admission

egress_order := ["none", "proxy", "open"]

egress_rank := {mode: i | some i, mode in egress_order}

egress_candidates contains [egress_rank[profile.egress], "profile"]

egress_candidates contains [0, "channel"] if channel.kind in cfg.channels.untrustedKinds

egress_candidates contains [egress_rank[input.request.execution.egress], "request"]

egress := egress_order[min({c[0] | some c in egress_candidates})]

info contains [2, "egress_tightened", msg] if {
	egress != profile.egress
	msg := sprintf("egress tightened from %s to %s (%s)", [profile.egress, egress, concat(", ", egress_causes)])
}

egress_causes contains "untrusted channel kind" if channel.kind in cfg.channels.untrustedKinds

egress_causes contains "requested by caller" if {
	egress_rank[input.request.execution.egress] < egress_rank[profile.egress]
}

ttl_requested := profile.ttlSeconds if profile.ttlSeconds != null

ttl_requested := cfg.ttl.defaultSeconds if profile.ttlSeconds == null

ttl_caps contains [cfg.ttl.maxSeconds, "global maximum"] if cfg.ttl.maxSeconds != null

ttl_caps contains [cfg.ttl.maxNonInteractiveSeconds, "non-interactive caller"] if {
	non_interactive
	cfg.ttl.maxNonInteractiveSeconds != null
}

ttl_caps contains [seconds, sprintf("channel kind %s", [channel.kind])] if {
	seconds := cfg.ttl.maxByKind[channel.kind]
	seconds != null
}

ttl_seconds := min({ttl_requested} | {c[0] | some c in ttl_caps})

info contains [3, "ttl_capped", msg] if {
	ttl_seconds < ttl_requested
	causes := concat(", ", sort({c[1] | some c in ttl_caps; c[0] == ttl_seconds}))
	msg := sprintf("ttl capped from %ds to %ds (%s)", [ttl_requested, ttl_seconds, causes])
}
