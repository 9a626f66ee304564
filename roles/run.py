"""Run one role alone: `pyinfra inventories/<env>.py roles/run.py --data role=redis`."""

from pyinfra import host

from gatekit.inventory import ROLE_GROUPS
from gatekit.roles.packages import base
from gatekit.roles.litellm import litellm
from gatekit.roles.nginx import nginx
from gatekit.roles.postgres import postgres
from gatekit.roles.redis import redis

ROLES = {name: (ROLE_GROUPS[name], fn) for name, fn in (("redis", redis), ("postgres", postgres), ("litellm", litellm), ("nginx", nginx))}
wanted = host.data.get("role")
if wanted not in ROLES:
    from pyinfra.api.exceptions import PyinfraError

    raise PyinfraError(f"--data role={wanted!r}: unknown role. Fix: use one of {sorted(ROLES)}.")
group, role = ROLES[wanted]
if group in host.groups:
    base()
    role()
