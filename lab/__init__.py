"""gatekit's test lab, beside the kit and not shipped with it: booted systemd-nspawn hosts (sandbox),
the fake LLM provider (fakeprovider), a whole local environment (env.Lab), client load (load) and the
checks the end-to-end tests and benchmarks share (checks). Command line: `python -m lab`."""
