"""Redis for LiteLLM's router state and caches: loopback + private address only, password as a hash."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from gatekit.hoststate import Desired, PackageWave
from gatekit.inventory import context
from gatekit.onhost.layout import Layout
from gatekit.render import redis_acl_hash, template

PACKAGES = ["redis-server"]


@deploy("Redis")
def redis(packages: PackageWave | None = None):
    """`packages`: the deploy-wide wave that installs PACKAGES (deploy.py); alone, the role installs them."""
    ctx = context(host)
    s = ctx.settings
    L = Layout.from_settings(s)

    want = Desired(packages=PACKAGES, units=[L.redis_unit])
    # Redis has no reload: a new config (or package) needs a restart.
    want.file(
        L.redis_conf,
        template("redis/redis.conf.j2", s=s, private_address=host.data.private_address,
                 password_hash=redis_acl_hash(ctx.secret(s["redis_password_secret"]))),
        user="redis", group="redis", mode="640", notify="restart", name=f"Render {L.redis_conf}",
    )
    want.read()

    want.ensure_packages("Install Redis", installed_by=packages, notify="restart")
    want.apply()
    want.ensure_running("Enable and start Redis", L.redis_unit)
    systemd.service(name="Restart Redis for its new config", service=L.redis_unit, restarted=True, _if=want.changed("restart"))
