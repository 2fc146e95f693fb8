# Where the worker runs: the backend and profile that config selection resolved, possibly
# moved to the backend's build profile for build/test tasks, and whether the caller's agent,
# channel and depth may use it.
package spawngate.admission

agent_id := input.request.agentId

channel := input.caller.channel

backend_name := input.resolved.backend

# The catalog (backends and profiles from the gateway's config) comes with the input when the
# caller sends it: opa eval, opa test, a REST sidecar. The engine loads it into data once per
# config instead, because parsing it inside WASM on every evaluation cost more than most rules.
catalog := input.catalog if {
	input.catalog
} else := data.spawngate.runtime.catalog

backend := catalog.backends[backend_name]

# WASM memoizes a rule's value within one evaluation, but not its being undefined: a boolean
# rule without a default is evaluated again at every reference while it is false. Hence the
# defaults on every boolean rule.

# The caller named a profile itself: placement never second-guesses an explicit choice.
default explicit_profile := false

explicit_profile if input.request.execution.profile != null

default non_interactive := false

non_interactive if channel.interactive == false

non_interactive if channel.kind in cfg.channels.nonInteractiveKinds

base_profile_name := input.resolved.profile if input.resolved.profile != null

base_profile_name := backend.defaultProfile if {
	input.resolved.profile == null
	backend.defaultProfile != null
}

base_profile := backend.profiles[base_profile_name]

# --- build/test detection ---
# On words, not regular expressions: an RE2 pattern is compiled on every evaluation inside WASM,
# which cost more than the rest of the policy together. The task is lower-cased and split into
# words at whitespace and at punctuation, which leaves a mark: the shell separators ` ; & | ( )
# become the word ";" (a command ends there), all other ASCII punctuation except _ becomes ".".
# So, as with a regex \b, "pytest-cov" holds the word "pytest", but "cargo-build" is not the
# phrase "cargo build" and "make." is not a bare "make".
# One native replace per separator, in turn. A mark put in by an earlier one (";" or ".") only
# gains spaces from a later one, so the words are those of a single pass over the text, which is
# what strings.replace_n does in `opa eval`; in WASM that builtin sorts its pairs' keys and looks
# each one up on every call, and cost twice this chain (7% of an admission).
normalised(text) := t36 if {
	t0 := lower(text)

	# whitespace: a space
	t1 := replace(t0, "\t", " ")
	t2 := replace(t1, "\n", " ")
	t3 := replace(t2, "\u000b", " ")
	t4 := replace(t3, "\f", " ")
	t5 := replace(t4, "\r", " ")

	# shell separators: the word ";"
	t6 := replace(t5, "`", " ; ")
	t7 := replace(t6, ";", " ; ")
	t8 := replace(t7, "&", " ; ")
	t9 := replace(t8, "|", " ; ")
	t10 := replace(t9, "(", " ; ")
	t11 := replace(t10, ")", " ; ")

	# other ASCII punctuation but _: the word "."
	t12 := replace(t11, "!", " . ")
	t13 := replace(t12, "\"", " . ")
	t14 := replace(t13, "#", " . ")
	t15 := replace(t14, "$", " . ")
	t16 := replace(t15, "%", " . ")
	t17 := replace(t16, "'", " . ")
	t18 := replace(t17, "*", " . ")
	t19 := replace(t18, "+", " . ")
	t20 := replace(t19, ",", " . ")
	t21 := replace(t20, "-", " . ")
	t22 := replace(t21, ".", " . ")
	t23 := replace(t22, "/", " . ")
	t24 := replace(t23, ":", " . ")
	t25 := replace(t24, "<", " . ")
	t26 := replace(t25, "=", " . ")
	t27 := replace(t26, ">", " . ")
	t28 := replace(t27, "?", " . ")
	t29 := replace(t28, "@", " . ")
	t30 := replace(t29, "[", " . ")
	t31 := replace(t30, "\\", " . ")
	t32 := replace(t31, "]", " . ")
	t33 := replace(t32, "^", " . ")
	t34 := replace(t33, "{", " . ")
	t35 := replace(t34, "}", " . ")
	t36 := replace(t35, "~", " . ")
}

task_words_of(text) := [word | some word in split(normalised(text), " "); word != ""]

normalised_task := normalised(input.request.task)

task_words := [word | some word in split(normalised_task, " "); word != ""]

# The words without the ignored ones, joined by single spaces and padded with one, so that
# contains(task_text, " npm test ") finds whole words only and the phrase "run test suite" is
# found in "run the full test suite".
task_text := concat("", [
	" ", concat(" ", [word |
		some word in split(normalised_task, " ")
		word != ""
		not ignored_words[word]
	]),
	" ",
])

ignored_words := {word | some word in cfg.buildPlacement.ignoredWords}

# Every keyword, phrase and command is looked for in the whole text: one native scan per entry
# costs far less than a rule evaluation per word, and a task can be a long prompt. The unpadded
# contains needs no new string and rules out almost every entry. The text is taken once per list
# rather than at every entry (each reference to a rule is a call and a memo lookup in WASM), and
# only for a list with an entry to look for: the task is normalised exactly when it was before.
default build_task := false

build_task if {
	keywords := cfg.buildPlacement.keywords
	has_entries(keywords)
	text := task_text
	some keyword in keywords
	contains(text, keyword)
	contains(text, concat("", [" ", keyword, " "]))
} else if {
	phrases := cfg.buildPlacement.phrases
	has_entries(phrases)
	text := task_text
	some phrase in phrases
	contains(text, phrase)
	contains(text, concat("", [" ", phrase, " "]))
} else if {
	commands := cfg.buildPlacement.commands
	has_entries(commands)
	text := task_text
	some name, targets in commands
	contains(text, concat("", [" ", name, " "]))
	some i, word in task_words
	word == name
	command_run(i, targets)
}

# A command counts where one of its targets follows it ("make test and report"), and where it
# ends its shell command after an optional -jN flag and an optional target: "make", "`make`",
# "run make -j8", "make -j8 all; make install". Not in "make the button blue" or "what to make?".
command_run(at, targets) if task_words[at + 1] in targets

command_run(at, targets) if command_ends_at(targets, (at + 1) + jobs_flag_words(at + 1))

command_ends_at(_, next) if next == count(task_words)

command_ends_at(_, next) if task_words[next] == ";"

command_ends_at(targets, next) if task_words[next] in targets

# Whether `some x in collection` has an element to bind: an array, set or object with one. Not a
# string, which count measures but `some ... in` does not iterate.
has_entries(collection) if {
	not is_string(collection)
	count(collection) > 0
}

# "-j8" and "-j 8" are the words [".", "j8"] and [".", "j", "8"].
jobs_flag_words(at) := 3 if {
	task_words[at] == "."
	task_words[at + 1] == "j"
	digits(task_words[at + 2])
} else := 2 if {
	task_words[at] == "."
	startswith(task_words[at + 1], "j")
	digits(substring(task_words[at + 1], 1, -1))
} else := 0

digits(text) if {
	text != ""
	trim_left(text, "0123456789") == ""
}

# --- placement ---

build_profiles contains name if {
	some name, profile in backend.profiles
	profile.class == "build"
	agent_may_use(profile)
	not blocked_for_channel(profile)
}

default placed_on_build := false

# Cheapest test first: most spawns stop before the task text is looked at.
placed_on_build if {
	not explicit_profile
	base_profile.class != "build"
	count(build_profiles) > 0
	build_task
}

profile_name := min(build_profiles) if {
	placed_on_build
} else := base_profile_name

profile := backend.profiles[profile_name]

profile_key := concat("/", [backend_name, profile_name]) if profile

agent_may_use(p) if p.allowedAgents == null

agent_may_use(p) if agent_id in p.allowedAgents

blocked_for_channel(p) if {
	p.interactiveOnly
	non_interactive
}

# --- deny reasons: [rank, code, message]; rank fixes the order users see them in ---
# Messages are built with concat and format_int, which WASM runs natively; sprintf is a call
# out to JavaScript with the arguments serialised to JSON and back.

quoted(name) := concat("", ["\"", name, "\""])

deny contains [10, "backend_unresolved", "no execution backend was selected: name one in the request or configure a default backend"] if {
	backend_name == null
}

deny contains [11, "unknown_backend", concat("", ["backend ", quoted(backend_name), " is not configured"])] if {
	backend_name != null
	not backend
}

deny contains [12, "unknown_profile", msg] if {
	backend
	base_profile_name
	not base_profile
	msg := concat("", ["profile ", quoted(base_profile_name), " is not defined on backend ", quoted(backend_name)])
}

deny contains [12, "unknown_profile", msg] if {
	backend
	not base_profile_name
	msg := concat("", ["no profile was selected and backend ", quoted(backend_name), " has no defaultProfile"])
}

deny contains [20, "agent_not_allowed", msg] if {
	not agent_may_use(profile)
	msg := concat("", ["agent ", quoted(agent_id), " may not use profile ", quoted(profile_key), " (allowed: ", concat(", ", sort(profile.allowedAgents)), ")"])
}

deny contains [20, "agent_not_allowed", concat("", ["agent ", quoted(agent_id), " is not on the allow-list"])] if {
	cfg.agents.allow != null
	not agent_id in cfg.agents.allow
}

deny contains [20, "agent_not_allowed", concat("", ["agent ", quoted(agent_id), " is on the deny-list"])] if {
	agent_id in cfg.agents.deny
}

deny contains [21, "interactive_only_profile", msg] if {
	blocked_for_channel(profile)
	msg := concat("", ["profile ", quoted(profile_key), " is interactive-only and channel ", quoted(channel.id), " (kind ", channel.kind, ") is not interactive"])
}

deny contains [22, "depth_exceeded", msg] if {
	input.caller.depth >= cfg.maxDepth
	msg := concat("", ["caller is at spawn depth ", format_int(input.caller.depth, 10), " and spawns are allowed only below depth ", format_int(cfg.maxDepth, 10)])
}

info contains [1, "placed_on_build_profile", msg] if {
	placed_on_build
	msg := concat("", ["build/test task placed on profile ", quoted(profile_key), " instead of ", quoted(concat("/", [backend_name, base_profile_name]))])
}
