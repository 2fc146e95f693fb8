package system.log_test

import data.system.log

admission_event(task) := {
	"decision_id": "d-1",
	"path": "spawngate/admission/decision",
	"input": {"request": {"agentId": "codex", "task": task}, "caller": {"user": {"id": "alice"}}},
	"result": {"allow": true},
}

permission_event := {
	"decision_id": "d-2",
	"path": "spawngate/permissions/decision",
	"input": {"tool": {"kind": "edit", "title": "Write a.txt", "rawInput": {"content": "the whole file"}}, "paths": [{"path": "/ws/a.txt", "inWorkspace": true}]},
	"result": {"outcome": "allow_once"},
}

with_settings(patch) := object.union(data.spawngate.admission.config.decisionLog, patch)

test_shipped_settings_cut_a_long_task_and_say_how_much if {
	task := concat("", [substring(long_text, 0, 1990), "0123456789abcde"])
	masks := log.mask with input as admission_event(task)
	masks == {{
		"op": "upsert",
		"path": "/input/request/task",
		"value": concat("", [substring(task, 0, 2000), "…[5 more characters]"]),
	}}
}

test_a_task_within_the_limit_is_kept if {
	count(log.mask) == 0 with input as admission_event("fix the tests")
	count(log.mask) == 0 with input as admission_event(substring(long_text, 0, 2000))
}

test_the_limit_counts_characters_not_bytes if {
	masks := log.mask with input as admission_event("ééééé") with data.spawngate.admission.config.decisionLog as with_settings({"taskMaxChars": 3})
	masks == {{"op": "upsert", "path": "/input/request/task", "value": "ééé…[2 more characters]"}}
}

test_null_keeps_the_whole_task if {
	count(log.mask) == 0 with input as admission_event(long_text) with data.spawngate.admission.config.decisionLog as with_settings({"taskMaxChars": null})
}

test_a_malformed_limit_erases_the_task if {
	every bad in ["2000", -1, 1.5, true] {
		log.mask == {"/input/request/task"} with input as admission_event("short") with data.spawngate.admission.config.decisionLog as with_settings({"taskMaxChars": bad})
	}
}

test_permission_lines_lose_the_tool_input_but_keep_paths_and_kind if {
	log.mask == {"/input/tool/rawInput"} with input as permission_event
}

test_tool_input_is_kept_only_on_an_explicit_false if {
	count(log.mask) == 0 with input as permission_event with data.spawngate.admission.config.decisionLog as with_settings({"eraseToolInput": false})
	log.mask == {"/input/tool/rawInput"} with input as permission_event with data.spawngate.admission.config.decisionLog as with_settings({"eraseToolInput": "no"})
}

test_each_rule_keeps_to_its_own_path if {
	# A permission line's task-like field and an admission line's rawInput-like field are not touched.
	count(log.mask) == 0 with input as object.union(permission_event, {"input": {"request": {"task": long_text}}, "path": "spawngate/permissions/decision"}) with data.spawngate.admission.config.decisionLog as with_settings({"eraseToolInput": false})
	count(log.mask) == 0 with input as object.union(admission_event("short"), {"input": {"tool": {"rawInput": "x"}}})
}

test_without_settings_nothing_is_masked if {
	count(log.mask) == 0 with input as admission_event(long_text) with data.spawngate.admission.config as {}
	count(log.mask) == 0 with input as permission_event with data.spawngate.admission.config as {}
}

long_text := concat("", [s | some _ in numbers.range(1, 300); s := "0123456789"])
