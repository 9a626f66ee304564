"""gatekit: rotate provider API keys without a failed request.

    gatekit secrets set openai_key --vault inventories/prod.secrets.enc.yaml   # new value on stdin
    pyinfra inventories/prod.py rotate_keys.py --data rotate=openai_key

Gateways are rotated in fleet order: the first alone, then rollout_batch at a time (blue/green instances, canary,
nginx switch, drain, record); the first failure rolls that host back and leaves later hosts untouched. See
roles/rotation.py and roles/switch.py.
"""

from pyinfra import host

from gatekit.inventory import context
from gatekit.roles.rotation import rotation

if "gateways" in host.groups:
    context(host)  # validate spec, settings and vault before any operation is collected
rotation()
