"""Redis for LiteLLM's router state and caches: loopback + private address only, password as a hash."""

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from gatekit.inventory import context
from gatekit.render import redis_acl_hash, template


@deploy("Redis")
def redis():
    ctx = context(host)
    s = ctx.settings

    install = apt.packages(name="Install Redis", packages=["redis-server"], no_recommends=True)
    conf = files.put(
        name="Render /etc/redis/redis.conf",
        src=io.StringIO(
            template(
                "redis/redis.conf.j2",
                s=s,
                private_address=host.data.private_address,
                password_hash=redis_acl_hash(ctx.secret(s["redis_password_secret"])),
            )
        ),
        dest="/etc/redis/redis.conf",
        user="redis",
        group="redis",
        mode="640",
    )
    systemd.service(name="Enable and start Redis", service="redis-server.service", running=True, enabled=True)
    # Restart (not reload: Redis has none) only when the config or the package changed.
    systemd.service(
        name="Restart Redis for its new config",
        service="redis-server.service",
        restarted=True,
        _if=lambda: conf.did_change() or install.did_change(),
    )
