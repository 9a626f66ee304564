"""gatekit: the whole gateway stack, idempotent. `pyinfra inventories/<env>.py deploy.py`

pyinfra runs the hosts side by side, one operation at a time, so the order below is the order of
waves every host goes through. The slow steps run in the background and overlap the rest:
- packages come in two shared waves (roles/packages.py); the second (PostgreSQL, nginx) installs in the
  background from right after the first until the first role that needs it;
- the LiteLLM venv builds in the background from right after the first wave until LiteLLM starts;
- with a `monitoring` group, the exporters and Prometheus come with the second wave, their drop-ins
  written before it (so no first start listens on every address) and activated after it;
- without a database, LiteLLM starts before PostgreSQL is configured, and nginx is configured while
  LiteLLM starts. In DB mode, PostgreSQL comes first (the schema is migrated before the start).
Each role is also runnable alone: `pyinfra inventories/<env>.py roles/run.py --data role=nginx`.
"""

from pyinfra import host

from gatekit.inventory import context
from gatekit.roles.litellm import litellm_ready, litellm_setup, litellm_start
from gatekit.roles.monitoring import monitoring, monitoring_setup
from gatekit.roles.nginx import nginx
from gatekit.roles.packages import FIRST_WAVE, SECOND_WAVE, install_packages, start_packages, wait_packages
from gatekit.roles.postgres import postgres
from gatekit.roles.redis import redis

ctx = context(host)  # validate spec, host settings and vault before any operation is collected
gateway = "gateways" in host.groups
database = ctx.settings["litellm_database"]

first = install_packages(FIRST_WAVE, "first")  # base tools, what the venv build needs, Redis
watch = monitoring_setup()  # exporters' drop-ins first: even their first start listens privately only
pending = start_packages(SECOND_WAVE, "second")  # PostgreSQL, nginx, exporters, Prometheus: in the background
if gateway:
    setup = litellm_setup(first)  # starts the venv build in the background, then writes config and credentials
if "redis" in host.groups:
    redis(first)
if gateway and not database:
    litellm_start(setup)  # waits for the venv build, (re)starts LiteLLM without waiting for it
second = wait_packages(pending)
if "postgres" in host.groups:
    postgres(second)
if gateway:
    if database:
        litellm_start(setup)
    nginx(second)  # configured while LiteLLM starts
monitoring(watch, second)
if gateway:
    litellm_ready(setup)
