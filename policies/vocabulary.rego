# A lint for the build-placement vocabulary (keywords, phrases, ignoredWords and commands in
# data.json), run by `opa test` on the shipped data (test_shipped_data_is_valid) rather than on
# every evaluation. An entry that the task normalisation would change (upper case, punctuation,
# stray spaces) or that is an ignored word can never match: that only loses a placement, it
# never relaxes a rule, and checking every word on every evaluation would cost more than the
# rest of the policy. config_valid still checks that the lists hold strings.
package spawngate.admission

build_vocabulary_problems contains concat("", ["buildPlacement.", list, "[", format_int(i, 10), "] must be a single lower-case word"]) if {
	some list in ["keywords", "ignoredWords"]
	some i, word in cfg.buildPlacement[list]
	not is_word(word)
}

build_vocabulary_problems contains concat("", ["buildPlacement.phrases[", format_int(i, 10), "] must be lower-case words separated by single spaces"]) if {
	some i, phrase in cfg.buildPlacement.phrases
	not is_phrase(phrase)
}

# Ignored words are dropped from the task before anything is looked for in it.
build_vocabulary_problems contains concat("", ["buildPlacement.phrases[", format_int(i, 10), "] contains the ignored word ", word]) if {
	some i, phrase in cfg.buildPlacement.phrases
	some word in split(phrase, " ")
	word in cfg.buildPlacement.ignoredWords
}

build_vocabulary_problems contains concat("", ["buildPlacement.keywords[", format_int(i, 10), "] is an ignored word"]) if {
	some i, word in cfg.buildPlacement.keywords
	word in cfg.buildPlacement.ignoredWords
}

build_vocabulary_problems contains concat("", ["buildPlacement.commands.", name, " is an ignored word"]) if {
	some name, _ in cfg.buildPlacement.commands
	name in cfg.buildPlacement.ignoredWords
}

build_vocabulary_problems contains concat("", ["buildPlacement.commands.", name, " must be a single lower-case word"]) if {
	some name, _ in cfg.buildPlacement.commands
	not is_word(name)
}

build_vocabulary_problems contains concat("", ["buildPlacement.commands.", name, "[", format_int(i, 10), "] must be a single lower-case word"]) if {
	some name, targets in cfg.buildPlacement.commands
	some i, target in targets
	not is_word(target)
}

# A word comes out of task_words_of as itself; ";" and "." are what punctuation turns into.
is_word(word) if {
	task_words_of(word) == [word]
	not word in {";", "."}
}

is_phrase(phrase) if {
	words := task_words_of(phrase)
	words != []
	concat(" ", words) == phrase
	every word in words {
		is_word(word)
	}
}
