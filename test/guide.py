"""The field guide's commands, as the end-to-end suite runs them: word for word.

``python test/guide.py GUIDE --section Linux --version V [--install-options "..."] [--uuid-file F]
[--block N]`` prints the ```bash blocks of one section of the guide as one script, in order (or only
block N, counted from 0). The only changes are the ones an engineer makes when reading the guide:
- ``<version>`` becomes the version of the package carried;
- ``<pacs-ae>``, ``<pacs-host>``, ``<pacs-port>`` become the site's PACS (``--pacs AE@HOST:PORT``), and
  ``<pacs-dicomweb-url>`` its DICOMweb root (``--pacs-dicomweb URL``);
- the install command gets the options the guide lists for this site (``--install-options``), and so
  does the swarm deploy command (``--deploy-options``);
- ``<manager-address>`` becomes the swarm manager's address (``--manager-address``);
- ``<the unpacked package folder>`` becomes the folder the package was unpacked in (``--package-folder``);
- ``<site-ca>.pem``, ``<audit-repository>`` and ``<server-name>`` become the audit repository's CA file, its
  address and this server's name (``--audit-ca``, ``--audit-repository``, ``--server-name``);
- on a machine without SMBIOS, the guide's own alternative: ``scripts/product-uuid.sh`` checks the
  site UUID file, and the install and swarm-node commands get ``--uuid-file`` (``--uuid-file``).
"""

import argparse
import re
import sys
from pathlib import Path

FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def section(text: str, name: str) -> str:
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not match:
        raise SystemExit(f"error: the guide has no section '## {name}'.")
    return match.group(1)


def blocks(text: str, name: str) -> list[str]:
    found = FENCE.findall(section(text, name))
    if not found:
        raise SystemExit(f"error: section '## {name}' of the guide has no ```bash block.")
    return found


def _with_options(line: str, options: str) -> str:
    """OPTIONS added to the command; before a pipe, where the command ends."""
    command, bar, rest = line.partition(" | ")
    return " ".join(filter(None, [command, options])) + (f" {bar.strip()} {rest}" if bar else "")


def as_run(
    block: str,
    version: str,
    install_options: str,
    uuid_file: str | None,
    pacs: str | None = None,
    deploy_options: str = "",
    manager_address: str = "",
    pacs_dicomweb: str | None = None,
    package_folder: str | None = None,
    audit: tuple[str, str, str] | None = None,
) -> str:
    block = block.replace("<version>", version).replace("<manager-address>", manager_address)
    if package_folder:
        block = block.replace("<the unpacked package folder>", package_folder)
    if audit:
        ca, repository, server_name = audit
        block = block.replace("<site-ca>.pem", ca).replace("<audit-repository>", repository)
        block = block.replace("<server-name>", server_name)
    if pacs_dicomweb:
        block = block.replace("<pacs-dicomweb-url>", pacs_dicomweb)
    if pacs:
        ae, _, address = pacs.partition("@")
        host, _, port = address.rpartition(":")
        block = block.replace("<pacs-ae>", ae).replace("<pacs-host>", host).replace("<pacs-port>", port)
    lines = []
    # A command continued over lines (a trailing backslash) is one line here, so options go at its end.
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        uuid_option = f"--uuid-file {uuid_file}" if uuid_file else ""
        if "./install.sh" in line:
            line = _with_options(line, " ".join(filter(None, [uuid_option, install_options])))
        elif "scripts/swarm-node.sh" in line:
            line = _with_options(line, uuid_option)
        elif "scripts/swarm-deploy.sh" in line:
            line = _with_options(line, deploy_options)
        elif uuid_file and line.rstrip().endswith("scripts/product-uuid.sh"):
            line = f"{line.rstrip()} {uuid_file}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("guide", type=Path)
    parser.add_argument("--section", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--install-options", default="")
    parser.add_argument("--uuid-file")
    parser.add_argument("--block", type=int)
    parser.add_argument("--pacs", help="the site's PACS as AE@HOST:PORT, for the <pacs-…> placeholders")
    parser.add_argument("--pacs-dicomweb", help="the site's PACS DICOMweb root, for <pacs-dicomweb-url>")
    parser.add_argument("--deploy-options", default="", help="options for scripts/swarm-deploy.sh")
    parser.add_argument("--manager-address", default="127.0.0.1", help="for <manager-address>")
    parser.add_argument("--package-folder", help="the unpacked package's folder, for <the unpacked package folder>")
    parser.add_argument("--audit-ca", help="the audit repository's CA file, for <site-ca>.pem")
    parser.add_argument("--audit-repository", help="the audit repository's address, for <audit-repository>")
    parser.add_argument("--server-name", help="this server's name at the site, for <server-name>")
    args = parser.parse_args()
    found = blocks(args.guide.read_text(encoding="utf-8"), args.section)
    chosen = found if args.block is None else [found[args.block]]
    sys.stdout.write(
        "".join(
            as_run(
                b,
                args.version,
                args.install_options,
                args.uuid_file,
                args.pacs,
                args.deploy_options,
                args.manager_address,
                args.pacs_dicomweb,
                args.package_folder,
                (args.audit_ca, args.audit_repository, args.server_name) if args.audit_ca else None,
            )
            for b in chosen
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
