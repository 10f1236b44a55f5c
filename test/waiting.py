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


def _load_ok(progress: str, at_least: str, url: str = "") -> int:
    """The closed-loop load's answered predictions (those URL answered, with URL), once there are AT_LEAST
    (test/closed_loop.py's progress file)."""
    import json
    from pathlib import Path

    def ok():
        path = Path(progress)
        summary = json.loads(path.read_text() or "{}") if path.exists() else {}
        count = summary.get("ok_by_url", {}).get(url, 0) if url else summary.get("ok", -1)
        return [count] if count >= int(at_least) else None  # a list: 0 answered is still an answer

    return wait_until(ok, 300, f"{at_least} answered predictions{f' from {url}' if url else ''}")[0]


def _docker(*args: str) -> str:
    import subprocess

    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False).stdout.strip()


def _running(service: str, field: str) -> list[str]:
    """FIELD ('{{.ID}}', '{{.Node}}') of SERVICE's tasks that are wanted and running (healthy, where the image has
    a health check: Swarm holds a task in Starting until it passes), over every node (DOCKER_HOST: a manager)."""
    lines = _docker(
        "service", "ps", service, "--filter", "desired-state=running", "--format", f"{field} {{{{.CurrentState}}}}"
    )
    return [line.split(" ", 1)[0] for line in lines.splitlines() if " Running " in f"{line} "]


def _replaced(service: str, task: str) -> str:
    """Swarm has replaced the crashed TASK (its ID): as many running tasks as wanted again, TASK not among them."""

    def done():
        running = _running(service, "{{.ID}}")
        wanted = _docker("service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", service)
        return str(len(running)) == wanted and not any(task.startswith(r) or r.startswith(task) for r in running)

    return wait_until(done, 300, f"Swarm to replace the crashed task {task} of {service}") and "replaced"


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


def _since(started: str) -> str:
    return f"{time.time() - float(started):.1f}"


def _node_status(hostname: str, status: str, started: str) -> str:
    """Seconds since STARTED (epoch) until the swarm (DOCKER_HOST: a manager) says node HOSTNAME is STATUS."""

    def done():
        nodes = dict(
            line.split(" ", 1) for line in _docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}").splitlines()
        )
        return nodes.get(hostname) == status

    wait_until(done, 120, f"node {hostname} to be {status}")
    return _since(started)


def _moved(service: str, hostname: str, started: str) -> str:
    """Seconds since STARTED until SERVICE runs all its replicas again, none of them on node HOSTNAME."""

    def done():
        nodes = _running(service, "{{.Node}}")
        wanted = _docker("service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", service)
        return str(len(nodes)) == wanted and hostname not in nodes

    wait_until(done, 90, f"{service}'s tasks to run on the nodes other than {hostname}")
    return _since(started)


def _task_on(service: str, hostname: str, started: str) -> str:
    """Seconds since STARTED until SERVICE has a running task on node HOSTNAME."""
    wait_until(lambda: hostname in _running(service, "{{.Node}}"), 240, f"a task of {service} running on {hostname}")
    return _since(started)


def _health_says(service: str, text: str) -> str:
    """The last health check output of a SERVICE task on this node (DOCKER_HOST: that node) that holds TEXT."""

    def said():
        for container in _docker("ps", "-q", "--filter", f"name={service}.").split():
            log = _docker(
                "inspect", "-f", "{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}", container
            )
            if text in log:
                return log.strip().splitlines()[-1]
        return None

    return wait_until(said, 240, f"a task of {service} here to say '{text}' in its health check")


if __name__ == "__main__":
    import sys

    commands = {
        "load-ok": _load_ok,
        "replaced": _replaced,
        "image": _image,
        "node-status": _node_status,
        "moved": _moved,
        "task-on": _task_on,
        "health-says": _health_says,
    }
    print(commands[sys.argv[1]](*sys.argv[2:]))
