# METADATA
# title: spawngate admission
# description: |
#   Entrypoint spawngate/admission/decision. Input and output are AdmissionInput and Decision
#   in src/admission/types.ts; deny codes are listed in docs/deny-codes.md.
package spawngate.admission

deny contains [1, "policy_config_invalid", concat("", ["policy configuration is invalid: ", problem])] if {
	not config_valid
	some problem in config_problems
}

# The tests keep config_valid and config_problems in agreement; should they ever differ, an
# invalid config still denies.
deny contains [1, "policy_config_invalid", "policy configuration is invalid"] if {
	not config_valid
	count(config_problems) == 0
}

allow := count(deny) == 0

# The engine accepts at most 64 reasons; the most fundamental ones sort first.
reasons := [{"code": d[1], "message": d[2]} | some d in array.slice(sort(deny), 0, 64)] if not allow

reasons := [{"code": i[1], "message": i[2]} | some i in sort(info)] if allow

default decision_backend := null

decision_backend := backend_name if backend

default decision_profile := null

decision_profile := profile_name if profile

default decision_egress := null

decision_egress := egress

# What spawngate's egress proxy lets through: the profile's allow-list, for a worker whose egress is
# "proxy" (and nothing for none/open). A policy may narrow or extend it here, per caller or channel.
default decision_egress_allow := []

decision_egress_allow := object.get(profile, "egressAllow", []) if decision_egress == "proxy"

default decision_ttl := null

decision_ttl := ttl_seconds

# A spawn may wait for a slot (decision.wait) only when the caller asked to (request.waitSeconds)
# and the policy allows some wait; the gate makes it wait only when full caps are all that deny it.
decision := object.union(decision_base, {"wait": decision_wait}) if decision_wait

else := decision_base

decision_base := {
	"allow": allow,
	"backend": decision_backend,
	"profile": decision_profile,
	"egress": decision_egress,
	"egressAllow": decision_egress_allow,
	"ttlSeconds": decision_ttl,
	"limits": decision_limits,
	"reasons": reasons,
}
