"""gatekit: the whole gateway stack, idempotent. `pyinfra inventories/<env>.py deploy.py`

Data hosts first (their services must be up before gateways connect), then the gateways.
Each role is also runnable alone: `pyinfra inventories/<env>.py roles/run.py --data role=nginx`.
"""

from pyinfra import host

from gatekit.inventory import context
from roles.base import base
from roles.litellm import litellm
from roles.nginx import nginx
from roles.postgres import postgres
from roles.redis import redis

context(host)  # validate spec, host settings and vault before any operation is collected

base()
if "redis" in host.groups:
    redis()
if "postgres" in host.groups:
    postgres()
if "gateways" in host.groups:
    litellm()
    nginx()
