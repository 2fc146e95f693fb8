# Network egress and lifetime of the worker. Both can only get stricter than the profile says:
# untrusted channels lose the network, a request may ask for less but never for more, and the
# TTL is capped per channel kind and for non-interactive callers.
package spawngate.admission

egress_order := ["none", "proxy", "open"]

egress_rank := {"none": 0, "proxy": 1, "open": 2}

default untrusted_channel := false

untrusted_channel if channel.kind in cfg.channels.untrustedKinds

# Absent limits count as "open", the loosest, so that min() picks the strictest one that is set.
channel_egress_rank := 0 if {
	untrusted_channel
} else := 2

request_egress_rank := rank if {
	rank := egress_rank[input.request.execution.egress]
} else := 2

egress := egress_order[min([egress_rank[profile.egress], channel_egress_rank, request_egress_rank])]

info contains [2, "egress_tightened", msg] if {
	egress != profile.egress
	msg := concat("", ["egress tightened from ", profile.egress, " to ", egress, " (", concat(", ", egress_causes), ")"])
}

egress_causes contains "untrusted channel kind" if untrusted_channel

egress_causes contains "requested by caller" if request_egress_rank < egress_rank[profile.egress]

ttl_requested := profile.ttlSeconds if profile.ttlSeconds != null

ttl_requested := cfg.ttl.defaultSeconds if profile.ttlSeconds == null

# Each cap, or the requested TTL when that cap is not set.
ttl_global_cap := cap if {
	cap := cfg.ttl.maxSeconds
	cap != null
} else := ttl_requested

ttl_non_interactive_cap := cap if {
	non_interactive
	cap := cfg.ttl.maxNonInteractiveSeconds
	cap != null
} else := ttl_requested

ttl_kind_cap := cap if {
	cap := cfg.ttl.maxByKind[channel.kind]
	cap != null
} else := ttl_requested

ttl_seconds := min([ttl_requested, ttl_global_cap, ttl_non_interactive_cap, ttl_kind_cap])

info contains [3, "ttl_capped", msg] if {
	ttl_seconds < ttl_requested
	msg := concat("", ["ttl capped from ", format_int(ttl_requested, 10), "s to ", format_int(ttl_seconds, 10), "s (", concat(", ", ttl_causes), ")"])
}

ttl_causes contains "global maximum" if ttl_global_cap == ttl_seconds

ttl_causes contains "non-interactive caller" if ttl_non_interactive_cap == ttl_seconds

ttl_causes contains concat(" ", ["channel kind", channel.kind]) if ttl_kind_cap == ttl_seconds
