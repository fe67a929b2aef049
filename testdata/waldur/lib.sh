# Helpers for the example Waldur handlers; each handler sources this file.
# Plain sh and sed: no jq or python needed.

# The JSON payload, read once from stdin.
body=$(cat)

# field NAME prints the value of the top-level string, number or boolean
# field NAME of the payload ("" when it is missing). Good enough for
# Waldur's flat payloads; a real handler would use a JSON parser.
field() {
	printf '%s' "$body" | sed -n 's/.*"'"$1"'" *: *"\{0,1\}\([^",}]*\)"\{0,1\} *[,}].*/\1/p' | head -n 1
}

# say writes one line about the message: appended to the file that
# WALDUR_HANDLER_LOG names, else to stdout (for a run by hand). agentq
# keeps nothing a successful call prints: its stdout is published only by
# a route with results:, and its stderr is kept (the last 2 KiB, as the
# entry's error) only when the call fails. So under agentq, set
# WALDUR_HANDLER_LOG to see these lines.
say() {
	line="waldur ${AGENTQ_TYPE:-?} #${AGENTQ_SEQ:-?} key=${AGENTQ_KEY:-} attempt=${AGENTQ_ATTEMPT:-1}: $*"
	if [ -n "${WALDUR_HANDLER_LOG:-}" ]; then
		printf '%s\n' "$line" >>"$WALDUR_HANDLER_LOG"
	else
		printf '%s\n' "$line"
	fi
}
