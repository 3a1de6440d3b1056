"""The pure rules of running a pod from its image: argv, user and volume order (no cluster, no buildah)."""

from __future__ import annotations

from e2ecluster.images import Buildah, _mount_order
from e2ecluster.podimage import container_argv, container_user

IMAGE = {"Entrypoint": ["legacygpu"], "Cmd": ["worker", "start", "--kubernetes"]}


def test_argv_follows_kubernetes_command_and_args_rules() -> None:
    env = {"MODEL": "digits"}
    assert container_argv({}, IMAGE, env) == ["legacygpu", "worker", "start", "--kubernetes"]
    assert container_argv({"args": ["api", "serve"]}, IMAGE, env) == ["legacygpu", "api", "serve"]
    assert container_argv({"args": []}, IMAGE, env) == ["legacygpu"]  # empty args still replace CMD
    assert container_argv({"command": ["sh", "-c"], "args": ["echo $(MODEL) $(NOPE)"]}, IMAGE, env) == [
        "sh", "-c", "echo digits $(NOPE)"]  # command drops ENTRYPOINT and CMD; unknown references stay  # fmt: skip


def test_user_comes_from_the_container_then_the_pod_then_the_image() -> None:
    pod = {"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 2000}}}
    assert container_user(pod, {}) == "1000:2000"
    assert container_user(pod, {"securityContext": {"runAsUser": 0}}) == "0:2000"
    assert container_user({"spec": {}}, {"securityContext": {"runAsUser": 7}}) == "7"
    assert container_user({"spec": {}}, {}) is None  # the image's USER


def test_volumes_bind_parents_first_and_a_shadowing_destination_last() -> None:
    order = [target for target, _ in _mount_order({
        "/tmp": "/srv/pod/tmp",
        "/etc/app/extra": "/tmp/pytest/extra",  # source under /tmp: /tmp must be bound after it
        "/etc/app": "/srv/pod/app",
    })]  # fmt: skip
    assert order == ["/etc/app", "/etc/app/extra", "/tmp"]


def test_var_run_destinations_bind_under_run() -> None:
    target = "/var/run/secrets/sa"
    argv = Buildah().run_argv("ctr", ["true"], volumes={target: "/srv/sa"}, read_only=[target])
    assert "/srv/sa:/run/secrets/sa:ro" in argv
