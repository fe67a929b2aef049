#!/bin/sh
# Example handler for Waldur's course_account messages: logs what the payload carries
# and exits 0. A site creates or deletes the course
# account on the backend.
set -eu
. "${0%/*}/lib.sh"
say "project $(field project_uuid) account $(field account_username) action=$(field action)"
exit 0
