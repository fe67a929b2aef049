#!/bin/sh
# Example handler for Waldur's offering_user messages: logs what the payload carries
# and exits 0. A site creates, renames or updates the
# local user (username, attributes) for the offering user.
set -eu
. "${0%/*}/lib.sh"
say "offering user $(field offering_user_uuid) username=$(field username) action=$(field action) state=$(field state)"
exit 0
