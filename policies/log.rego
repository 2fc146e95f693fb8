# What the decision log keeps of each decision. Entrypoint system/log/mask: OPA's convention for
# decision logs, so the same rule works in an OPA that logs decisions. The input is the whole log
# event (decision_id, path, input, result, labels, bundles, timestamp, stage); the output a set of
# JSON pointers into /input or /result to erase, or {"op": "upsert", "path", "value"} to replace a
# value (docs/decision-log.md).
#
# The gateway applies the set to each line, records what it did in the line's erased and masked
# lists, and then replaces credential-shaped strings in whatever is left, so this rule is for what
# a pattern cannot know is sensitive or too big.
#
# Tunables in data.spawngate.admission.config.decisionLog (spawngate.policyData.decisionLog in the
# config overrides them):
#   taskMaxChars    a longer task (the prompt) is cut to this many characters; null keeps it whole
#   eraseToolInput  permission lines leave out the tool call's rawInput (a whole file, a script);
#                   the paths and the kind, which decided, stay
# A setting that is missing does not mask; one of the wrong type erases the field it governs,
# since the limit it stands for cannot be honoured.
package system.log

admission_path := "spawngate/admission/decision"

permission_path := "spawngate/permissions/decision"

default settings := {}

settings := data.spawngate.admission.config.decisionLog

task_max := object.get(settings, "taskMaxChars", null)

task := input.input.request.task

mask contains {"op": "upsert", "path": "/input/request/task", "value": cut_task} if {
	input.path == admission_path
	whole(task_max)
	is_string(task)
	count(task) > task_max
}

mask contains "/input/request/task" if {
	input.path == admission_path
	task_max != null
	not whole(task_max)
}

# Anything but an explicit false erases: a typo must not put file contents in the log.
mask contains "/input/tool/rawInput" if {
	input.path == permission_path
	object.get(settings, "eraseToolInput", false) != false
}

cut_task := concat("", [substring(task, 0, task_max), "…[", format_int(count(task) - task_max, 10), " more characters]"])

whole(x) if {
	is_number(x)
	x >= 0
	floor(x) == x
}
