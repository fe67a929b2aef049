#!/bin/sh
# Example handler for Waldur's order messages: logs what the payload carries
# and exits 0. A site fetches the order (GET /api/marketplace-orders/UUID/) and, for
# pending-provider and executing, creates, updates or terminates the
# SLURM account (sacctmgr), then approves or completes the order. The
# hourly reminder carries only order_uuid.
set -eu
. "${0%/*}/lib.sh"
say "order $(field order_uuid) state=$(field order_state)"
exit 0
