"""Waiting for something a test caused to happen (a restart, a delivery): poll, with a deadline."""

import time


def wait_until(predicate, seconds: float, what: str):
    """predicate's first truthy value; AssertionError naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def _load_ok(progress: str, at_least: str) -> int:
    """The closed-loop load's answered predictions, once there are AT_LEAST (test/closed_loop.py's progress file)."""
    import json
    from pathlib import Path

    def ok():
        path = Path(progress)
        count = json.loads(path.read_text() or "{}").get("ok", -1) if path.exists() else -1
        return [count] if count >= int(at_least) else None  # a list: 0 answered is still an answer

    return wait_until(ok, 300, f"{at_least} answered predictions")[0]


def _docker(*args: str) -> str:
    import subprocess

    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False).stdout.strip()


def _replaced(service: str, victim: str) -> str:
    """Swarm has replaced the killed task: as many running tasks as wanted again, the victim not among them."""

    def done():
        running = _docker("ps", "-q", "--filter", f"name={service}.").split()
        wanted = _docker("service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", service)
        return str(len(running)) == wanted and not any(victim.startswith(c) or c.startswith(victim) for c in running)

    return wait_until(done, 300, f"Swarm to replace the killed task {victim} of {service}") and "replaced"


def _image(service: str, version: str) -> str:
    """SERVICE runs VERSION with every task up (after an update or a rollback has finished)."""

    def done():
        image = _docker("service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", service)
        state = _docker("service", "inspect", "-f", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}", service)
        replicas = _docker("service", "ls", "--filter", f"name={service}", "--format", "{{.Replicas}}").split("\n")[0]
        converged = replicas.split("/")[0] == replicas.split("/")[-1]
        return (
            image.split("@")[0].endswith(f":{version}")
            and state in ("", "completed", "rollback_completed")
            and converged
        )

    return wait_until(done, 300, f"{service} to run {version}") and version


if __name__ == "__main__":
    import sys

    commands = {"load-ok": _load_ok, "replaced": _replaced, "image": _image}
    print(commands[sys.argv[1]](*sys.argv[2:]))
