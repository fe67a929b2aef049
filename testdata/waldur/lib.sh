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

# say logs one line about the message to stdout (agentq keeps a handler's
# output with the entry and in its log).
say() {
	echo "waldur ${AGENTQ_TYPE:-?} #${AGENTQ_SEQ:-?} key=${AGENTQ_KEY:-} attempt=${AGENTQ_ATTEMPT:-1}: $*"
}
