"""A real nginx (the Debian package) in front of keyturn, run from a test directory.

nginx runs in the foreground as a child of the test, with its configuration, pid file, logs and
temporary files all under one directory, so nothing outside it is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.server_process import stop, wait_until_healthy

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "keyturn.conf.template"
_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")


def _which_nginx() -> str | None:
    # Debian puts nginx in /usr/sbin, which is not on every user's PATH.
    return shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def install_nginx() -> str:
    """The nginx binary, installed from Debian when missing; skips when it cannot be."""
    found = _which_nginx()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("nginx is not installed, and installing it needs root and apt-get (Debian)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
    ):
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.skip(f"nginx cannot be installed: `{' '.join(command)}` failed: {detail[0]}")
    found = _which_nginx()
    if found is None:
        pytest.skip("nginx cannot be installed: apt-get succeeded but no nginx binary appeared")
    return found


def render_template(values: Mapping[str, str]) -> str:
    """What `envsubst` with exactly these names makes of the template; nginx's own `$vars` stay."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], TEMPLATE.read_text())


def _main_config(directory: Path, site: Path) -> str:
    """The parts a distribution's nginx.conf would provide, pointed into `directory`."""
    temp = directory / "temp"
    return "\n".join(
        [
            "worker_processes 1;",
            "events { worker_connections 128; }",
            "http {",
            f"    access_log {directory / 'default-access.log'};",
            f"    client_body_temp_path {temp / 'client_body'};",
            f"    proxy_temp_path {temp / 'proxy'};",
            f"    fastcgi_temp_path {temp / 'fastcgi'};",
            f"    uwsgi_temp_path {temp / 'uwsgi'};",
            f"    scgi_temp_path {temp / 'scgi'};",
            f"    include {site};",
            "}",
            "",
        ]
    )


@contextmanager
def running_nginx(
    binary: str,
    directory: Path,
    *,
    port: int,
    instances: Sequence[str],
    access_log: Path,
) -> Iterator[str]:
    """Start nginx on 127.0.0.1:`port` in front of two `host:port` instances; yield its URL."""
    first, second = instances
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "temp").mkdir(exist_ok=True)
    site = directory / "keyturn.conf"
    site.write_text(
        render_template(
            {
                "NGINX_LISTEN": f"127.0.0.1:{port}",
                "NGINX_ACCESS_LOG": str(access_log),
                "KEYTURN_INSTANCE_1": first,
                "KEYTURN_INSTANCE_2": second,
            }
        )
    )
    config = directory / "nginx.conf"
    config.write_text(_main_config(directory, site))
    error_log = directory / "error.log"
    directives = f"daemon off; pid {directory / 'nginx.pid'}; error_log {error_log};"
    if os.geteuid() == 0:
        # Workers would otherwise run as nobody, who cannot enter pytest's 0700 directories.
        directives += " user root;"
    command = [binary, "-p", str(directory), "-e", str(error_log), "-c", str(config)]
    process = subprocess.Popen(
        [*command, "-g", directives], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"

    def error_output() -> str:
        return ":\n" + error_log.read_text() if error_log.exists() else ""

    try:
        wait_until_healthy(process, base, name="nginx", seconds=10, on_exit=error_output)
        yield base
    finally:
        stop(process, seconds=10)  # SIGTERM: nginx's fast shutdown, the test is over
