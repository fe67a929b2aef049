#!/bin/sh
# Example handler for Waldur's offering_resources_sync messages: logs what the payload carries
# and exits 0. A site reconciles every resource of
# the offering with Waldur (the periodic full sync, on demand).
set -eu
. "${0%/*}/lib.sh"
say "offering $(field offering_uuid) sync requested by $(field requested_by_user_uuid)"
exit 0
