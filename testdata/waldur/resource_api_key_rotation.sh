#!/bin/sh
# Example handler for Waldur's resource_api_key_rotation messages: logs what the payload carries
# and exits 0. A site rotates the API key of the
# resource's client on the backend.
set -eu
. "${0%/*}/lib.sh"
say "resource $(field resource_uuid) rotate key $(field api_key_uuid) client=$(field client_id)"
exit 0
