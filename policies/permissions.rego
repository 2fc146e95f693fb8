# What an agent may do inside a worker the admission policy already let run. A coding agent asks
# (ACP session/request_permission) before it edits, deletes, moves, runs a command or reads
# outside its brief; the worker hands each request to the gateway, which evaluates this rule and
# answers. Nobody watches a worker to click "allow", so the answer is this policy's alone.
#
# Input (docs/policy.md, "Permission requests"):
#   agent, profile, backend, spawnId   where the request comes from
#   caller                             the admission input's caller (user, roles, channel)
#   tool {toolCallId, kind, title, rawInput}   what the agent wants to do (kind: ACP tool kind)
#   paths [{path, inWorkspace}]        every path the request names, resolved by the worker
#                                      (symlinks included); inWorkspace: under the workspace root
#   workspace {root}                   the agent's working directory in the worker
#   options [kind]                     what the agent offered: allow_once, allow_always, reject_once, reject_always
#
# Output: {outcome: allow_once | allow_always | reject, code, reason}. The gateway maps it onto the
# options the agent offered (allow_always falls back to allow_once; a grant the agent did not offer
# is a reject) and writes request and answer to the turn's event stream and the decision log.
#
# Tunables in data.spawngate.admission.config.permissions (so spawngate.policyData.permissions in
# the config overrides them): "default" holds the settings, "profiles.<name>" replaces any of them
# for one profile. A malformed setting rejects every request (fail closed), naming the setting.
package spawngate.permissions

settings_data := object.get(data.spawngate.admission.config, "permissions", {})

settings := object.union(
	object.get(settings_data, "default", {}),
	object.get(object.get(settings_data, "profiles", {}), input.profile, {}),
)

grants := {"once": "allow_once", "always": "allow_always"}

# object.get, not settings.x: a missing setting must count as a problem, not make the check undefined.
problems contains "allowKinds must be a list of ACP tool kinds" if not string_list(object.get(settings, "allowKinds", null))

problems contains "pathKinds must be a list of ACP tool kinds" if not string_list(object.get(settings, "pathKinds", null))

problems contains "grant must be \"once\" or \"always\"" if not grants[object.get(settings, "grant", null)]

string_list(x) if {
	is_array(x)
	every item in x {
		is_string(item)
	}
}

kind := object.get(input.tool, "kind", "other")

# A path without inWorkspace: true counts as outside (a worker that does not say is not believed).
outside contains p.path if {
	some p in input.paths
	not p.inWorkspace == true
}

default decision := {
	"outcome": "reject",
	"code": "permission_policy_error",
	"reason": "the permission policy reached no decision",
}

decision := reject("permission_config_invalid", concat("; ", sort(problems))) if {
	count(problems) > 0
} else := reject("path_outside_workspace", concat("", [describe, " names ", concat(", ", sort(outside)), ", outside the workspace ", input.workspace.root])) if {
	count(outside) > 0
} else := reject("tool_kind_not_allowed", concat("", [describe, ": tool kind ", json.marshal(kind), " is not allowed in profile ", input.profile])) if {
	not kind in settings.allowKinds
} else := reject("path_unknown", concat("", [describe, ": a ", json.marshal(kind), " request must name the paths it touches"])) if {
	kind in settings.pathKinds
	count(input.paths) == 0
} else := {
	"outcome": grants[settings.grant],
	"code": "allowed",
	"reason": concat("", [describe, ": tool kind ", json.marshal(kind), " is allowed in profile ", input.profile, inside_note]),
}

reject(code, reason) := {"outcome": "reject", "code": code, "reason": reason}

# concat and json.marshal rather than sprintf: OPA's WASM sprintf knows no %q.
describe := json.marshal(input.tool.title) if {
	is_string(input.tool.title)
	input.tool.title != ""
} else := "the tool call"

inside_note := " (inside the workspace)" if {
	count(input.paths) > 0
} else := ""
