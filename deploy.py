"""gatekit: the whole gateway stack, idempotent. `pyinfra inventories/<env>.py deploy.py`

pyinfra runs the hosts side by side, one operation at a time, so the order below is the order of
waves every host goes through. The slow steps overlap the rest:
- packages are installed in two shared waves (roles/packages.py), each host its own, side by side;
- the LiteLLM venv builds in the background from right after the first wave until LiteLLM starts,
  across the second wave and every configuration step;
- nginx is configured while LiteLLM starts.
On a host that is both gateway and data host, Redis and PostgreSQL are configured before LiteLLM starts.
Each role is also runnable alone: `pyinfra inventories/<env>.py roles/run.py --data role=nginx`.
"""

from pyinfra import host

from gatekit.inventory import context
from roles.litellm import litellm_ready, litellm_setup, litellm_start
from roles.nginx import nginx
from roles.packages import FIRST_WAVE, SECOND_WAVE, install_packages
from roles.postgres import postgres
from roles.redis import redis

context(host)  # validate spec, host settings and vault before any operation is collected
gateway = "gateways" in host.groups

first = install_packages(FIRST_WAVE, "first")  # base tools, what the venv build needs, Redis
if gateway:
    setup = litellm_setup(first)  # starts the venv build in the background, then writes config and credentials
if "redis" in host.groups:
    redis(first)
second = install_packages(SECOND_WAVE, "second")  # PostgreSQL, nginx: overlap the venv build
if "postgres" in host.groups:
    postgres(second)
if gateway:
    litellm_start(setup)  # waits for the venv build, (re)starts LiteLLM without waiting for it
    nginx(second)  # configured while LiteLLM starts
    litellm_ready(setup)
