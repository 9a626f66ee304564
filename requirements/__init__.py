"""Hash-locked requirements the kit installs on gateways (shipped as package data)."""
