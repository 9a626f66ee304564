"""Programs that run on the gateway hosts (Python stdlib only), uploaded by the deploy with the host's layout."""
