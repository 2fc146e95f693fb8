package spawngate.permissions_test

import data.spawngate.permissions

request(overrides) := object.union(
	{
		"agent": "qwen",
		"profile": "default",
		"backend": "local",
		"spawnId": "s-1",
		"caller": {"user": {"id": "u1", "roles": []}, "channel": {"id": "c1", "kind": "chat", "interactive": true}},
		"tool": {"toolCallId": "t-1", "kind": "edit", "title": "Write notes.txt", "rawInput": {}},
		"paths": [{"path": "/ws/notes.txt", "inWorkspace": true}],
		"workspace": {"root": "/ws"},
		"options": ["allow_once", "allow_always", "reject_once"],
	},
	overrides,
)

test_edit_inside_workspace_allowed_once if {
	d := permissions.decision with input as request({})
	d.outcome == "allow_once"
	d.code == "allowed"
	d.reason == `"Write notes.txt": tool kind "edit" is allowed in profile default (inside the workspace)`
}

test_any_path_outside_rejects if {
	paths := [{"path": "/ws/a", "inWorkspace": true}, {"path": "/etc/passwd", "inWorkspace": false}]
	d := permissions.decision with input as request({"paths": paths})
	d.outcome == "reject"
	d.code == "path_outside_workspace"
	d.reason == `"Write notes.txt" names /etc/passwd, outside the workspace /ws`
}

test_read_outside_rejects_too if {
	d := permissions.decision with input as request({"tool": {"kind": "read", "title": "Read"}, "paths": [{"path": "/root/.ssh/id_rsa", "inWorkspace": false}]})
	d.code == "path_outside_workspace"
}

test_missing_in_workspace_flag_counts_as_outside if {
	d := permissions.decision with input as request({"paths": [{"path": "/ws/x"}]})
	d.code == "path_outside_workspace"
}

test_edit_without_paths_rejects if {
	d := permissions.decision with input as request({"paths": []})
	d.outcome == "reject"
	d.code == "path_unknown"
}

test_execute_without_paths_allowed if {
	d := permissions.decision with input as request({"tool": {"kind": "execute", "title": "npm test"}, "paths": []})
	d.outcome == "allow_once"
	d.reason == `"npm test": tool kind "execute" is allowed in profile default`
}

test_untitled_tool_described_generically if {
	d := permissions.decision with input as request({"tool": {"title": ""}, "paths": []})
	d.reason == `the tool call: a "edit" request must name the paths it touches`
}

test_profile_override_narrows_kinds if {
	cfg := {"permissions": {"default": {"allowKinds": ["read", "edit"], "pathKinds": ["edit"], "grant": "once"}, "profiles": {"readonly": {"allowKinds": ["read", "search"]}}}}
	d := permissions.decision with input as request({"profile": "readonly"}) with data.spawngate.admission.config as cfg
	d.outcome == "reject"
	d.code == "tool_kind_not_allowed"
	d.reason == `"Write notes.txt": tool kind "edit" is not allowed in profile readonly`
	other := permissions.decision with input as request({}) with data.spawngate.admission.config as cfg
	other.outcome == "allow_once"
}

test_profile_may_grant_always if {
	cfg := {"permissions": {"default": {"allowKinds": ["edit"], "pathKinds": [], "grant": "once"}, "profiles": {"trusted": {"grant": "always"}}}}
	d := permissions.decision with input as request({"profile": "trusted"}) with data.spawngate.admission.config as cfg
	d.outcome == "allow_always"
}

test_unknown_kind_defaults_to_other if {
	cfg := {"permissions": {"default": {"allowKinds": ["read"], "pathKinds": [], "grant": "once"}}}
	d := permissions.decision with input as json.remove(request({"paths": []}), ["tool/kind"]) with data.spawngate.admission.config as cfg
	d.code == "tool_kind_not_allowed"
	contains(d.reason, `tool kind "other"`)
}

test_malformed_settings_reject_everything if {
	cfg := {"permissions": {"default": {"allowKinds": "edit", "pathKinds": ["edit"], "grant": "sometimes"}}}
	d := permissions.decision with input as request({}) with data.spawngate.admission.config as cfg
	d.outcome == "reject"
	d.code == "permission_config_invalid"
	d.reason == `allowKinds must be a list of ACP tool kinds; grant must be "once" or "always"`
}

test_no_settings_at_all_rejects if {
	d := permissions.decision with input as request({}) with data.spawngate.admission.config as {}
	d.code == "permission_config_invalid"
}

test_shipped_data_is_well_formed if {
	count(permissions.problems) == 0
}
