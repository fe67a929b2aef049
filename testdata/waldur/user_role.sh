#!/bin/sh
# Example handler for Waldur's user_role messages: logs what the payload carries
# and exits 0. A site adds or removes the user in the
# project's SLURM account (sacctmgr add/remove user); a sync message
# without user_uuid asks for the whole project's membership.
set -eu
. "${0%/*}/lib.sh"
say "project $(field project_uuid) ($(field project_name)) user=$(field user_username) role=$(field role_name) granted=$(field granted)"
exit 0
