#!/bin/sh
# Example handler for Waldur's importable_resources messages: logs what the payload carries
# and exits 0. A site lists its backend resources
# that Waldur could import and reports them for the request.
set -eu
. "${0%/*}/lib.sh"
say "import request $(field backend_resource_request_uuid)"
exit 0
