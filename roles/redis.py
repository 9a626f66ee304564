"""Redis for LiteLLM's router state and caches: loopback + private address only, password as a hash."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from gatekit.hoststate import Desired, PackageWave, any_changed
from gatekit.inventory import context
from gatekit.render import redis_acl_hash, template

CONF = "/etc/redis/redis.conf"
UNIT = "redis-server.service"


PACKAGES = ["redis-server"]


@deploy("Redis")
def redis(packages: PackageWave | None = None):
    """`packages`: the deploy-wide wave that installs PACKAGES (deploy.py); alone, the role installs them."""
    ctx = context(host)
    s = ctx.settings

    want = Desired(packages=PACKAGES, units=[UNIT])
    want.file(
        CONF,
        template(
            "redis/redis.conf.j2",
            s=s,
            private_address=host.data.private_address,
            password_hash=redis_acl_hash(ctx.secret(s["redis_password_secret"])),
        ),
        user="redis",
        group="redis",
        mode="640",
    )
    want.read()

    install = want.ensure_packages("Install Redis", installed_by=packages)
    conf = want.ensure_file("Render /etc/redis/redis.conf", CONF)
    want.ensure_running("Enable and start Redis", UNIT)
    # Restart (Redis has no reload) only when the config or the package changed.
    systemd.service(name="Restart Redis for its new config", service=UNIT, restarted=True, _if=any_changed(conf, install))
