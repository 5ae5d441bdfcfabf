"""A private image mounted lazily with credentials from a kubelet credential provider
plugin only: the kubelet talks to containerd directly (no PullImage reaches the daemon, so
the CRI keychain stays empty) and the node has no docker config. The plugin is a real
executable; its answer expires and the next one is a rotated credential, used by the mounts
made after it, while the layers mounted before keep reading files never read before. Real
containerd, runc, htpasswd registry and FUSE."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from lazypull.cli.main import main
from lazypull.service.cri.kubelet import Kubelet, Pod
from tests.e2e.test_cri import COLD, CONFIGS, World, _files_containing, make_node
from tests.e2e.test_cri import world as world
from tests.support.credplugin import Plugin, auth_answer, provider_config
from tests.support.images import Entry, busybox_layer, write_image
from tests.support.net import wait_for
from tests.support.registry import start_registry, write_htpasswd

pytestmark = pytest.mark.e2e

USERS = {"robot-1": "plugin-s3cret-1-Xq", "robot-2": "plugin-s3cret-2-Vw", "containerd": "containerd-pw-Jm"}
NEW = os.urandom(1 << 20)  # in the second image only: mounted after the rotation


def test_lazy_mounts_with_plugin_credentials_and_rotation(tmp_path: Path, world: World) -> None:
    reg = start_registry(tmp_path / "reg", users=USERS)
    plugin = Plugin(tmp_path / "plugins", tmp_path / "plugin-state", "ecr-like-credential-provider")
    try:
        up = ["--plain-http", "--user", f"containerd:{USERS['containerd']}"]
        image = f"{reg.host}/team/app:esgz"
        assert main(["copy", *up, f"oci:{world.src}:latest", f"{reg.host}/team/app:orig"]) == 0
        assert main(["convert", *up, "--oci", f"{reg.host}/team/app:orig", image]) == 0
        app2 = [Entry("app2", "dir", mode=0o755), Entry("app2/new.bin", data=NEW)]
        write_image(tmp_path / "src2", [busybox_layer(), app2], cmd=["/bin/sh"])
        image2 = f"{reg.host}/team/app2:esgz"
        assert main(["copy", *up, f"oci:{tmp_path / 'src2'}:latest", f"{reg.host}/team/app2:orig"]) == 0
        assert main(["convert", *up, "--oci", f"{reg.host}/team/app2:orig", image2]) == 0

        plugin.answer(auth_answer({reg.host: ("robot-1", USERS["robot-1"])}, key_type="Registry", duration="3s"))
        cp_config = tmp_path / "credential-provider-config.yaml"
        cp_config.write_text(json.dumps(provider_config(plugin, [f"{reg.host}/team"])))
        extra = (
            f'[credential_providers]\nconfig = "{cp_config}"\nbin_dir = "{plugin.bin_dir}"\n'
            "timeout_sec = 10\nrenew_interval_sec = 1\n"
        )
        with make_node(tmp_path / "n", world, (reg.host,), daemon_config=extra) as node:
            # The kubelet without --image-service-endpoint: PullImage goes to containerd, whose
            # credentials (its own user) the daemon never sees.
            with Kubelet(node.cd.address, node.cd.address) as kubelet:
                containerd_user = f"containerd:{USERS['containerd']}"
                t1 = kubelet.run(
                    image,
                    Pod("first", node.root / "pods" / "first"),
                    ["/bin/sh", "-c", "md5sum /app/config/a.yaml; echo started"],
                    user=containerd_user,
                    wait_for="started",
                )
                assert hashlib.md5(CONFIGS["app/config/a.yaml"]).hexdigest() in t1.output
                log = node.daemon.log()
                assert len(re.findall(rf"layer \w+ of {re.escape(image)} mounted lazily", log)) == 2
                assert plugin.runs == 1
                assert plugin.requests()[0]["request"] == {
                    "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                    "kind": "CredentialProviderRequest",
                    "image": f"{reg.host}/team/app",
                }
                assert "credential provider ecr-like-credential-provider: answered" in log
                # Rotation: the plugin's next answer is another credential. Once the first answer
                # expired, the daemon's renewal asks again and hands the served layers the new one;
                # then the registry revokes the first (it reloads its htpasswd).
                plugin.answer(
                    auth_answer({reg.host: ("robot-2", USERS["robot-2"])}, key_type="Registry", duration="3s")
                )
                wait_for(lambda: node.daemon.log().count("reads with rotated credentials") >= 2, 30, "renewal")
                assert plugin.runs >= 2  # run again once its first answer expired
                write_htpasswd(reg.root / "htpasswd", {u: p for u, p in USERS.items() if u != "robot-1"})
                # The layers mounted before the rotation read a file never read before.
                t2 = kubelet.run(
                    t1.image_ref,
                    Pod("second", node.root / "pods" / "second"),
                    ["/bin/sh", "-c", "md5sum /app/cold.bin; echo second"],
                    wait_for="second",
                    pull=False,
                )
                assert hashlib.md5(COLD).hexdigest() in t2.output
                # The next image's lookups and mounts use the rotated credential too.
                t3 = kubelet.run(
                    image2,
                    Pod("third", node.root / "pods" / "third"),
                    ["/bin/sh", "-c", "md5sum /app2/new.bin; echo third"],
                    user=containerd_user,
                    wait_for="third",
                )
                assert hashlib.md5(NEW).hexdigest() in t3.output
                assert plugin.runs >= 2
                # cacheKeyType Registry: the answer asked for team/app serves team/app2 as well
                assert {r["request"]["image"] for r in plugin.requests()} == {f"{reg.host}/team/app"}
                log = node.daemon.log()
                assert re.search(rf"layer \w+ of {re.escape(image2)} mounted lazily", log)
            log = node.daemon.log()
            assert "requires credentials" not in log and "access denied" not in log
            # Secrets: not in the daemon's log, not in any file under the node's root.
            for secret in (USERS["robot-1"], USERS["robot-2"]):
                assert secret not in log
                assert not _files_containing(node.daemon.root.parent, secret.encode())
            print(
                f"\nplugin credentials: first pod {t1.total_s:.2f}s, cold read after rotation and revocation "
                f"{t2.total_s:.2f}s, new image {t3.total_s:.2f}s; plugin runs {plugin.runs}"
            )
    finally:
        reg.stop()
