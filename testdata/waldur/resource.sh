#!/bin/sh
# Example handler for Waldur's resource messages: logs what the payload carries
# and exits 0. A site applies the resource's limits and
# state to its SLURM account (sacctmgr modify account ... GrpTRESMins=).
set -eu
. "${0%/*}/lib.sh"
say "resource $(field resource_uuid) backend_id=$(field resource_backend_id) downscaled=$(field downscaled) paused=$(field paused)"
exit 0
