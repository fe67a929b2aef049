#!/bin/sh
# Example handler for Waldur's resource_periodic_limits messages: logs what the payload carries
# and exits 0. A site applies the policy's periodic
# settings (fairshare, GrpTRESMins) to the resource's SLURM account.
set -eu
. "${0%/*}/lib.sh"
say "resource $(field resource_uuid) backend_id=$(field backend_id) policy=$(field policy_uuid) action=$(field action) at $(field timestamp)"
exit 0
