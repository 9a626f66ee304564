"""gatekit: the whole gateway stack, idempotent. `pyinfra inventories/<env>.py deploy.py`

Each host runs its roles in this order; pyinfra runs the hosts side by side, one operation at a time,
so a data host's few operations are done long before any gateway starts LiteLLM (and on a host that
is both, Redis and PostgreSQL come before the start). The slow steps overlap the rest: the LiteLLM
venv builds in the background from a gateway's first operations, and nginx is configured while
LiteLLM starts.
Each role is also runnable alone: `pyinfra inventories/<env>.py roles/run.py --data role=nginx`.
"""

from pyinfra import host

from gatekit.inventory import context
from roles.base import base
from roles.litellm import litellm_ready, litellm_setup, litellm_start
from roles.nginx import nginx
from roles.postgres import postgres
from roles.redis import redis

context(host)  # validate spec, host settings and vault before any operation is collected

base()
if "gateways" in host.groups:
    gateway = litellm_setup()  # starts the venv build in the background, then writes config and credentials
if "redis" in host.groups:
    redis()
if "postgres" in host.groups:
    postgres()
if "gateways" in host.groups:
    litellm_start(gateway)  # waits for the venv build, (re)starts LiteLLM without waiting for it
    nginx()  # configured while LiteLLM starts
    litellm_ready(gateway)
