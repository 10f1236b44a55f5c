"""The field guide's commands, as the end-to-end suite runs them: word for word.

``python test/guide.py GUIDE --section Linux --version V [--install-options "..."] [--uuid-file F]
[--block N]`` prints the ```bash blocks of one section of the guide as one script, in order (or only
block N, counted from 0). The only changes are the ones an engineer makes when reading the guide:
- ``<version>`` becomes the version of the package carried;
- ``<pacs-ae>``, ``<pacs-host>``, ``<pacs-port>`` become the site's PACS (``--pacs AE@HOST:PORT``);
- the install command gets the options the guide lists for this site (``--install-options``);
- on a machine without SMBIOS, the guide's own alternative: ``scripts/product-uuid.sh`` checks the
  site UUID file and the install command gets ``--uuid-file`` (``--uuid-file``).
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


def as_run(block: str, version: str, install_options: str, uuid_file: str | None, pacs: str | None = None) -> str:
    block = block.replace("<version>", version)
    if pacs:
        ae, _, address = pacs.partition("@")
        host, _, port = address.rpartition(":")
        block = block.replace("<pacs-ae>", ae).replace("<pacs-host>", host).replace("<pacs-port>", port)
    lines = []
    for line in block.splitlines():
        if "./install.sh" in line:
            line = " ".join(filter(None, [line, f"--uuid-file {uuid_file}" if uuid_file else "", install_options]))
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
    args = parser.parse_args()
    found = blocks(args.guide.read_text(encoding="utf-8"), args.section)
    chosen = found if args.block is None else [found[args.block]]
    sys.stdout.write("".join(as_run(b, args.version, args.install_options, args.uuid_file, args.pacs) for b in chosen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
