"""The Windows twins, without PowerShell: every .ps1 parses, and each keeps step with its bash twin.

PowerShell cannot run on the build machines, so the PowerShell scripts are held to what can be checked here:
- every .ps1 in the repository parses with tree-sitter-powershell, with no ERROR or MISSING node (a short
  allow-list names the valid syntax the grammar does not know, each still a gap in the pinned grammar);
- parity, read from both twins as they are: the same options (--kebab-case is -PascalCase), the same
  refusal sentences (die/warn/bad against throw/Write-Warning/Bad, variables read as {}), in the same order
  in each pair of twin functions, with the same calls to twin functions in the same order; and the same
  patterns for what they check, run against hostile values: bash's own check_env_value and check_sums_lines
  against the PowerShell twin's patterns and character sets, value for value;
- what issue 25 found in the Windows twins, read from their syntax trees: no -Path where a path is taken
  literally, Get-ChildItem always with -Force, ACLs by well-known SID, .env written as UTF-8 without BOM with
  LF, no native command's error stream redirected where 'Stop' would make it fatal under Windows PowerShell 5.1.
Anything only one side has is listed below with the reason.
"""

import functools
import re
import subprocess

import pytest
import tree_sitter
import tree_sitter_powershell

from sample_data import ROOT

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
TWINS = {  # name: (bash files, PowerShell files); the first of each is the script, the rest what it loads
    "install": (
        ["deployment_template/install.sh", "scripts/lib.sh", "scripts/package-trust.sh"],
        ["deployment_template/install.ps1", "scripts/package-trust.ps1"],
    ),
    "load-images": (["scripts/load-images.sh"], ["scripts/load-images.ps1"]),
    "preflight": (["scripts/preflight.sh"], ["scripts/preflight.ps1"]),
    "product-uuid": (["scripts/product-uuid.sh"], ["scripts/product-uuid.ps1"]),
}


@functools.cache
def _read(path: str) -> str:
    return (ROOT / path).read_text()


@functools.cache
def _tree(path: str) -> tuple[tree_sitter.Tree, bytes]:
    source = (ROOT / path).read_bytes()
    return PARSER.parse(source), source


def _nodes(node: tree_sitter.Node, *types: str):
    if node.type in types:
        yield node
    for child in node.children:
        yield from _nodes(child, *types)


def _text(node: tree_sitter.Node, source: bytes) -> str:
    return source[node.start_byte : node.end_byte].decode()


# --- every .ps1 parses ------------------------------------------------------------------------------------


def _ps1_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.ps1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode == 0:
        return sorted({name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()})
    skip = {".git", ".venv", "build", "dist", "node_modules"}
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.ps1") if not skip & set(p.relative_to(ROOT).parts))


# Valid PowerShell the pinned grammar reports as an error; each entry is checked to still be a gap below, so
# that it leaves this list when the grammar learns it. Confirmed by reading the code each time it was hit.
GRAMMAR_GAPS = {
    # Numeric literals with a multiplier suffix (1KB ... 1PB: about_Numeric_Literals) are valid; the grammar
    # parses the number and leaves the suffix as an ERROR node (preflight.ps1 divides by 1GB).
    "multiplier suffix": (
        b"$gb = [math]::Floor($bytes / 1GB)\n",
        lambda node, source: (
            node.is_error
            and source[node.start_byte : node.end_byte].upper() in (b"KB", b"MB", b"GB", b"TB", b"PB")
            and source[node.start_byte - 1 : node.start_byte].isdigit()
        ),
    ),
}


def _syntax_problems(source: bytes) -> list[tuple[tree_sitter.Node, str]]:
    problems = []

    def visit(node: tree_sitter.Node) -> None:
        if node.is_error or node.is_missing:
            if not any(known(node, source) for _, known in GRAMMAR_GAPS.values()):
                problems.append((node, f"MISSING {node.type}" if node.is_missing else "ERROR"))
            if node.is_error:
                return
        if node.has_error:
            for child in node.children:
                visit(child)

    visit(PARSER.parse(source).root_node)
    return problems


def test_every_windows_twin_is_found():
    assert {ps1 for _, (_, ps1s) in TWINS.items() for ps1 in ps1s} <= set(_ps1_files())


@pytest.mark.parametrize("path", _ps1_files())
def test_powershell_parses_without_errors(path):
    tree, source = _tree(path)
    assert tree.root_node.type == "program" and tree.root_node.named_child_count > 0
    problems = [
        f"{path}:{node.start_point[0] + 1}:{node.start_point[1] + 1}: {kind} at "
        f"{source[node.start_byte : node.end_byte][:60]!r} in line {source.splitlines()[node.start_point[0]].strip()[:120]!r}"
        for node, kind in _syntax_problems(source)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "snippet",
    [
        b"function Test-It {\n    if ($a) { 'x' }\n",  # a brace never closed
        b"$x = @(1, 2\n",  # an array never closed
        b'throw "the package is not valid\n',  # a string never closed
        b"$driver = (& nvidia-smi --query-gpu=driver_version --format=csv,noheader)\n",  # the comma preflight.ps1 had
        b"if ($a) { 'x' } else if ($b) { 'y' }\n",  # 'else if' is not PowerShell
    ],
    ids=["brace", "array", "string", "unquoted-comma", "else-if"],
)
def test_the_parse_check_finds_broken_powershell(snippet):
    assert _syntax_problems(snippet)


@pytest.mark.parametrize("name", sorted(GRAMMAR_GAPS))
def test_each_allowed_grammar_gap_is_still_a_gap(name):
    snippet, known = GRAMMAR_GAPS[name]
    tree = PARSER.parse(snippet)
    assert any(known(node, snippet) for node in _nodes(tree.root_node, "ERROR")), (
        f"tree-sitter-powershell now parses the {name}: take it off GRAMMAR_GAPS"
    )


# --- reading the bash twins -------------------------------------------------------------------------------


def _closing(text: str, i: int, opening: str, closing: str) -> int:
    """The index after the bracket that closes the one at i (quoted text inside skipped)."""
    depth = 0
    while True:
        c = text[i]
        if c in "\"'":
            end = i + 1
            while text[end] != c:
                end += 2 if c == '"' and text[end] == "\\" else 1
            i = end + 1
            continue
        depth += (c == opening) - (c == closing)
        i += 1
        if depth == 0:
            return i


def _bash_string(text: str, i: int) -> str:
    """The quoted word at i, with every expansion ($X, ${X}, $(...)) read as {}."""
    if text[i] == "'":
        return text[i + 1 : text.index("'", i + 1)]
    assert text[i] == '"', text[i : i + 40]
    out, j = [], i + 1
    while text[j] != '"':
        if text[j] == "\\":
            out.append(text[j + 1])
            j += 2
        elif text.startswith("$(", j) or text.startswith("${", j):
            j = _closing(text, j + 1, text[j + 1], ")" if text[j + 1] == "(" else "}")
            out.append("{}")
        elif text[j] == "$" and re.match(r"[A-Za-z_0-9*@#?]", text[j + 1]):
            j = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9*@#?]").match(text, j + 1).end()
            out.append("{}")
        else:
            out.append(text[j])
            j += 1
    return "".join(out)


def _bash_functions(text: str) -> tuple[dict[str, str], str]:
    """name() bodies, and the script's own lines outside them (its main flow)."""
    functions, main, lines, i = {}, [], text.splitlines(keepends=True), 0
    while i < len(lines):
        m = re.match(r"([a-z_][a-z0-9_]*)\(\) \{(.*)", lines[i])
        if not m:
            main.append(lines[i])
            i += 1
            continue
        body = [m.group(2)]
        if not m.group(2).rstrip().endswith("}"):
            i += 1
            while lines[i].rstrip() != "}":
                body.append(lines[i])
                i += 1
        functions[m.group(1)] = "".join(body)
        i += 1
    return functions, "".join(main)


def _bash_constants(text: str) -> dict[str, str]:
    return {m.group(1): _bash_string(text, m.start(2)) for m in re.finditer(r"(?m)^([A-Z_]+)=([\"'])", text)}


def _bash_sentences(text: str, constants: dict[str, str]) -> list[str]:
    """What die, warn and bad say (and product-uuid.sh's error lines), in order."""
    found = []
    for m in re.finditer(r"(?<![\w-])(?:(?:die|warn|bad)\s+(?=[\"'])|echo (?=\"error: ))", text):
        start = m.end()
        raw = re.match(r"\"\$\{?([A-Z_]+)\}?\"", text[start:])
        sentence = constants[raw.group(1)] if raw and raw.group(1) in constants else _bash_string(text, start)
        found.append(sentence.removeprefix("error: "))
    return found


# --- reading the PowerShell twins ---------------------------------------------------------------------


def _ps_string(node: tree_sitter.Node, source: bytes) -> str:
    """A string literal's text, with every expansion ($X, ${X}, $(...)) read as {} and backtick escapes undone."""
    literal = node.named_children[0] if node.type == "string_literal" else node
    text = _text(literal, source)
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    out, position = [], literal.start_byte + 1
    for child in literal.named_children:
        out += [source[position : child.start_byte].decode(), "{}"]
        position = child.end_byte
    out.append(source[position : literal.end_byte - 1].decode())
    return re.sub(r"`(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), "".join(out))


def _ps_constants(tree: tree_sitter.Tree, source: bytes) -> dict[str, str]:
    constants = {}
    for node in _nodes(tree.root_node, "assignment_expression"):
        left, right = node.children[0], node.children[-1]
        strings = list(_nodes(right, "string_literal"))
        if len(strings) == 1 and _text(right, source) == _text(strings[0], source):
            constants[_text(left, source).lower()] = _ps_string(strings[0], source)
    return constants


def _ps_command_name(node: tree_sitter.Node, source: bytes) -> str:
    name = next(_nodes(node, "command_name", "command_name_expr"), None)
    return _text(name, source) if name is not None else ""


def _ps_sentences(node: tree_sitter.Node, source: bytes, constants: dict[str, str]) -> list[str]:
    """What throw, Write-Warning and Bad say, in order ('{}' alone: a message passed on, left out)."""
    found = []
    for statement in _nodes(node, "flow_control_statement", "command"):
        if statement.type == "flow_control_statement":
            if statement.children[0].type != "throw" or len(statement.children) < 2:
                continue
            argument = statement.children[1]
        elif _ps_command_name(statement, source) in ("Write-Warning", "Bad"):
            argument = statement.children[-1]
        else:
            continue
        strings = list(_nodes(argument, "string_literal"))
        if strings:
            sentence = _ps_string(strings[0], source)
        else:
            sentence = constants.get(_text(argument, source).strip().lower(), "{}")
        if sentence != "{}":
            found.append(sentence)
    return found


def _ps_functions(tree: tree_sitter.Tree, source: bytes) -> dict[str, tree_sitter.Node]:
    return {_text(next(_nodes(f, "function_name")), source): f for f in _nodes(tree.root_node, "function_statement")}


def _ps_parameters(tree: tree_sitter.Tree, source: bytes) -> dict[str, bool]:
    """The script's parameters: name -> True for a [switch]."""
    block = next(n for n in tree.root_node.children if n.type == "param_block")
    return {
        _text(next(_nodes(p, "variable")), source)[1:]: "[switch]" in _text(p, source).lower()
        for p in _nodes(block, "script_parameter")
    }


# --- the same options ------------------------------------------------------------------------------------


def _pascal(option: str) -> str:
    return "".join(part.capitalize() for part in option.lstrip("-").split("-"))


def _bash_options(text: str) -> dict[str, bool]:
    """The --options the script's 'case "$1"' loop takes: name -> True for a flag (no value)."""
    loop = text[text.index('case "$1" in') :]
    loop = loop[: loop.index("esac")]
    options = {}
    for arm in loop.split(";;"):
        m = re.match(r"\s*((?:-[-a-z|]+)+)\)", arm.split('case "$1" in')[-1])
        if m:
            for option in m.group(1).split("|"):
                options[option] = "shift 2" not in arm and '"$2"' not in arm
    return options


# Options that only one twin has; the rest must match, as names and as flag or value.
BASH_ONLY_OPTIONS = {
    ("install", "-h"): "PowerShell's Get-Help reads the script's header",
    ("install", "--help"): "PowerShell's Get-Help reads the script's header",
    (
        "install",
        "--uuid-file",
    ): "Windows reads the SMBIOS UUID through WMI (product-uuid.ps1), there is no file to name",
    ("load-images", "-h"): "PowerShell's Get-Help reads the script's header",
    ("load-images", "--help"): "PowerShell's Get-Help reads the script's header",
    (
        "preflight",
        "--uuid-file",
    ): "Windows reads the SMBIOS UUID through WMI (product-uuid.ps1), there is no file to name",
}
PS_ONLY_OPTIONS = {
    ("product-uuid", "OutFile"): "install.sh redirects product-uuid.sh's output into the file; install.ps1 names it",
}


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_twins_take_the_same_options(twin):
    bash_files, ps_files = TWINS[twin]
    text = _read(bash_files[0])
    bash = _bash_options(text) if 'case "$1" in' in text else {}
    ps = _ps_parameters(*_tree(ps_files[0]))
    expected = {_pascal(option): flag for option, flag in bash.items() if (twin, option) not in BASH_ONLY_OPTIONS}
    actual = {name: flag for name, flag in ps.items() if (twin, name) not in PS_ONLY_OPTIONS}
    assert actual == expected, (
        f"{ps_files[0]} -> {bash_files[0]}: only in PowerShell {sorted(set(actual) - set(expected))}, "
        f"only in bash {sorted(set(expected) - set(actual))}, "
        f"flag or value differs {sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])}"
    )
    for name, option in [*BASH_ONLY_OPTIONS, *PS_ONLY_OPTIONS]:
        if name == twin:
            assert option in bash or option in ps, f"{option} is allowed for {twin} but neither twin has it: drop it"


# --- the same sentences ---------------------------------------------------------------------------------

# How a sentence is spelt on Windows where the bash one names Linux (applied to bash's side before comparing).
PLATFORM_WORDS = {"or as root.": "or as Administrator."}
BASH_ONLY_SENTENCES = {
    "cannot open {} (run this as root).": "Windows holds its lock in ProgramData\\chexnet, which the installer makes "
    "Administrators' first",
    "unknown option {} (see -Help)": "PowerShell refuses an unknown parameter itself",
    "neither 'docker compose' nor 'docker-compose' is installed.": "Docker Desktop carries Compose v2; preflight.ps1 checks it",
    "{} has other names (hard links), so it is not read; put a copy of the file there.": "no hard-link count in .NET Framework; what Windows reads is copied once into a private file, and the site "
    "folder is Administrators' with every item's owner reset",
    "{} belongs to uid {}, not to root{}, so it is not read; chown it or put your own copy there.": "Windows has no uid: install.ps1 makes every item of the install folder Administrators' (owner and entries)",
    "unknown option {} (use -Variant, -Dir, -UuidFile, -Ports)": "PowerShell refuses an unknown parameter itself",
    "docker is not installed": "Windows: Docker Desktop not running and not installed are one finding",
    "the Docker daemon is not running or not reachable by this user": "Windows: 'Docker Desktop is not running (...)'",
    "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed": "Windows: Docker Desktop carries Compose v2",
    "{} is not readable: run the installer as root": "Windows reads the SMBIOS UUID through WMI, not a root-only file",
    "{} does not exist (a VM without SMBIOS?): enable the BIOS UUID in the hypervisor, or ask the vendor how to bind this VM": "Windows reads the SMBIOS UUID through WMI: 'cannot read the product UUID: {}'",
    "nvidia-smi found no GPU/driver; install the NVIDIA driver (>= {}) and the NVIDIA Container Toolkit, or use -Variant cpu": "Windows needs no Container Toolkit (Docker Desktop's WSL 2 GPU support): its own sentence",
    "{} does not exist: this machine (or VM) exposes no SMBIOS UUID.": "Windows reads the SMBIOS UUID through WMI",
    "{} is readable by root only: run 'sudo {}'.": "Windows reads the SMBIOS UUID through WMI",
    "{} holds '{}', which is not a UUID.": "Windows: 'Win32_ComputerSystemProduct reports '{}', which is not a UUID; ...'",
    "{} holds the placeholder {}, which identifies no machine.": "Windows: 'Win32_ComputerSystemProduct reports the placeholder ...'",
}
PS_ONLY_SENTENCES = {
    "docker compose {} failed (exit {}).": "bash's ERR trap names the failing command",
    "the smoke prediction failed (see above).": "bash's ERR trap names the failing command",
    "{} exists already; remove it and run this again.": "bash's mktemp makes a new name itself",
    "{} could not be removed ({}); remove it by hand.": "bash's rm -rf in its EXIT trap says nothing",
    "{} is a link, a junction or a file; give -Dir a folder of its own.": "C:\\ lets any user make a folder (or junction) there before the first install; /opt does not",
    "{} cannot be made Administrators' and SYSTEM's alone ({}); remove it and run the installer again.": "the ACLs of an install folder older installers left open (issue 25, item 9)",
    "Docker Desktop is not running: the folders the containers mount in {} are shared with this account ({}); run the "
    "installer again as the account Docker Desktop runs under if that is another one.": "Docker Desktop opens bind mounts as the signed-in account, which needs its own access entry",
    "{} is Windows Server, which Docker Desktop does not support: run the Linux package in a Linux VM (Hyper-V) on this "
    "server instead (see the field guide, 'Windows Server')": "Docker Desktop does not run on Windows Server",
    'Docker Desktop is not running (sign in, start it and wait for "Engine running"; set it to start at sign-in)': "bash: 'the Docker daemon is not running ...'",
    "'docker compose' is not available (update Docker Desktop)": "bash: 'neither docker compose nor docker-compose ...'",
    "cannot read the product UUID: {}": "bash names the SMBIOS file's problem",
    "nvidia-smi found no GPU; install the NVIDIA driver (>= {}) or use the cpu package": "bash also names the NVIDIA Container Toolkit",
    "Win32_ComputerSystemProduct reports '{}', which is not a UUID; ask the hardware vendor or hypervisor administrator to set one.": "bash names the SMBIOS file",
    "Win32_ComputerSystemProduct reports the placeholder {}, which identifies no machine.": "bash names the SMBIOS file",
}


def _to_windows(sentence: str) -> str:
    """A bash sentence as the Windows twin says it: options as parameters, Linux words as Windows ones."""
    sentence = re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", lambda m: "-" + _pascal(m.group(1)), sentence)
    for linux, windows in PLATFORM_WORDS.items():
        sentence = sentence.replace(linux, windows)
    return sentence


def _normal(sentence: str) -> str:
    return sentence.replace("\\", "/")  # a Windows path in a sentence ({}\.env) as bash spells it ({}/.env)


def _sentences(twin: str) -> tuple[list[str], list[str]]:
    bash_files, ps_files = TWINS[twin]
    constants = {}
    for path in bash_files:
        constants.update(_bash_constants(_read(path)))
    bash = [_to_windows(s) for path in bash_files for s in _bash_sentences(_read(path), constants)]
    ps = []
    for path in ps_files:
        tree, source = _tree(path)
        ps_constants = {}
        for other in ps_files:
            ps_constants.update(_ps_constants(*_tree(other)))
        ps += [_normal(s) for s in _ps_sentences(tree.root_node, source, ps_constants)]
    return bash, ps


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_twins_refuse_with_the_same_sentences(twin):
    bash, ps = _sentences(twin)
    assert bash or twin == "load-images", f"no sentence found in the bash {twin}: the reader above needs a look"
    missing_in_ps = sorted(set(bash) - set(ps) - set(BASH_ONLY_SENTENCES))
    missing_in_bash = sorted(set(ps) - set(bash) - set(PS_ONLY_SENTENCES))
    assert not missing_in_ps and not missing_in_bash, (
        f"{twin}: sentences the PowerShell twin lacks (or words differently): {missing_in_ps}; "
        f"sentences only the PowerShell twin has: {missing_in_bash}"
    )


def test_each_one_sided_sentence_is_still_said():
    said_bash, said_ps = set(), set()
    for twin in TWINS:
        bash, ps = _sentences(twin)
        said_bash |= set(bash)
        said_ps |= set(ps)
    assert not set(BASH_ONLY_SENTENCES) - said_bash, "no bash twin says these any more: drop them"
    assert not set(PS_ONLY_SENTENCES) - said_ps, "no PowerShell twin says these any more: drop them"
    assert not set(BASH_ONLY_SENTENCES) & said_ps and not set(PS_ONLY_SENTENCES) & said_bash, "both say it now: drop it"


# --- the same functions, checking in the same order ----------------------------------------------------

FUNCTION_TWINS = {  # bash function: its PowerShell twin
    "setting": "Get-Setting",
    "compose": "Invoke-Compose",
    "installed": "Test-Installed",
    "preflight": "Invoke-Preflight",
    "snapshot": "Save-Snapshot",
    "restore_snapshot": "Restore-Snapshot",
    "configure": "Set-Configuration",
    "dicom_enabled": "Test-DicomEnabled",
    "check_site_thresholds": "Test-SiteThresholds",
    "wait_healthy": "Wait-Healthy",
    "runs_version": "Test-RunningVersion",
    "up_and_wait": "Start-Version",
    "smoke": "Invoke-Smoke",
    "in_range": "Test-InRange",
    "check_env_value": "Test-EnvValue",
    "check_site_env": "Test-SiteEnv",
    "env_value": "Get-EnvValue",
    "set_env": "Set-EnvValue",
    "check_site_file": "Assert-SiteFile",
    "write_site_env": "Write-SiteEnv",
    "cert_fingerprint": "Get-CertFingerprint",
    "verify_signature": "Test-VendorSignature",
    "private_copy": "Copy-PrivateFile",
    "vendor_cert": "Resolve-VendorCertificate",
    "stage_package": "Initialize-PackageStaging",
    "remove_staging": "Remove-PackageStaging",
    "one_at_a_time": "Enter-OneAtATime",
    "package_value": "Get-PackageValue",
    "check_not_older": "Assert-NotOlder",
    "record_installed": "Save-InstalledSequence",
    "listed_files": "Get-ListedFiles",
    "shown": "Format-Name",
    "check_entries": "Test-PackageEntries",
    "check_sums_lines": "Test-SumsLines",
    "verify_package": "Test-Package",
    "copy_listed": "Copy-ListedFile",
    "load_images": "Import-PackageImages",
}
BASH_ONLY_FUNCTIONS = {
    "log": "Write-Host '==> ...'",
    "warn": "Write-Warning",
    "die": "throw",
    "on_error": "PowerShell names the failing line",
    "trap_errors": "$ErrorActionPreference = 'Stop'",
    "project_version": "the build's, not the installer's",
    "compose_command": "Docker Desktop carries Compose v2 only",
    "copy_site_file": "the token is copied once by Copy-PrivateFile, then given its own ACL",
    "configure_and_start": "install.ps1 runs Set-Configuration and Start-Version in one try block",
}
# Calls a bash function makes that its PowerShell twin leaves to another place: name -> {twin call} (none now).
CALLED_ELSEWHERE: dict[str, set[str]] = {}
# Twins whose sentences come in another order for a reason (the order of their checks is pinned by a test).
UNORDERED = {
    "check_entries": "PowerShell lists the folder before it checks the names (bash checks them as find hands them over)",
}


def _install_functions():
    bash, main = {}, ""
    for path in TWINS["install"][0]:
        functions, rest = _bash_functions(_read(path))
        bash.update(functions)
        if path.endswith("install.sh"):
            main = rest
    ps, trees = {}, {}
    for path in TWINS["install"][1]:
        tree, source = _tree(path)
        trees[path] = (tree, source)
        ps.update({name: (node, source) for name, node in _ps_functions(tree, source).items()})
    return bash, main, ps, trees


def test_every_bash_function_has_its_powershell_twin():
    bash, _, ps, _ = _install_functions()
    assert not set(bash) - set(FUNCTION_TWINS) - set(BASH_ONLY_FUNCTIONS), (
        "give these a twin in install.ps1 or package-trust.ps1"
    )
    assert not {FUNCTION_TWINS[name] for name in bash if name in FUNCTION_TWINS} - set(ps)
    assert not (set(FUNCTION_TWINS) | set(BASH_ONLY_FUNCTIONS)) - set(bash), (
        "the bash twin no longer has these: drop them"
    )


def _in_same_order(first: list[str], second: list[str]) -> bool:
    """The items both lists hold come in the same order (by first appearance)."""
    common = set(first) & set(second)
    one = list(dict.fromkeys(item for item in first if item in common))
    two = list(dict.fromkeys(item for item in second if item in common))
    return one == two


def _bash_code(text: str) -> str:
    """Text less its comments and the literal parts of its strings (what $(...) runs inside one is kept)."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif c == "'":
            i = text.index("'", i + 1) + 1
        elif c == "\\":
            i += 2
        elif c == '"':
            i += 1
            while text[i] != '"':
                if text[i] == "\\":
                    i += 2
                elif text.startswith("$(", i):
                    end = _closing(text, i + 1, "(", ")")
                    out.append(" " + _bash_code(text[i + 2 : end - 1]) + " ")
                    i = end
                else:
                    i += 1
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


# bash functions that only group others (install.ps1 writes what they hold in place): read as their calls.
GROUPING = {"configure_and_start"}


def _bash_calls(body: str, functions: dict[str, str]) -> list[str]:
    calls = []
    for m in re.finditer(r"(?<![\w$./-])([a-z_]+)(?![\w(./-])", _bash_code(body)):
        if m.group(1) in GROUPING:
            calls += _bash_calls(functions[m.group(1)], functions)
        elif m.group(1) in FUNCTION_TWINS:
            calls.append(FUNCTION_TWINS[m.group(1)])
    return calls


# PowerShell helpers that only wrap a twin (bash calls the twin itself): read as their calls.
PS_GROUPING = {"Get-ContainerId"}


def _ps_calls(node: tree_sitter.Node, source: bytes) -> list[str]:
    twins, calls = set(FUNCTION_TWINS.values()), []
    for command in _nodes(node, "command"):
        name = _ps_command_name(command, source)
        if name in PS_GROUPING:
            calls += _ps_calls(_ps_functions(*_tree("deployment_template/install.ps1"))[name], source)
        elif name in twins:
            calls.append(name)
    return calls


def _pairs():
    return [pytest.param(name, id=name) for name in sorted(FUNCTION_TWINS)] + [pytest.param("<main>", id="main-flow")]


@pytest.mark.parametrize("name", _pairs())
def test_twin_functions_check_in_the_same_order(name):
    bash, main, ps, trees = _install_functions()
    constants = {}
    for path in TWINS["install"][0]:
        constants.update(_bash_constants(_read(path)))
    ps_constants = {}
    for tree, source in trees.values():
        ps_constants.update(_ps_constants(tree, source))
    if name == "<main>":
        body = main
        tree, source = trees["deployment_template/install.ps1"]
        ps_sentences = _ps_sentences_outside_functions(tree, source, ps_constants)
        ps_calls = _ps_calls_outside_functions(tree, source)
    else:
        body = bash[name]
        node, source = ps[FUNCTION_TWINS[name]]
        ps_sentences = _ps_sentences(node, source, ps_constants)
        ps_calls = _ps_calls(node, source)
    bash_sentences = [_to_windows(s) for s in _bash_sentences(body, constants)]
    ps_sentences = [_normal(s) for s in ps_sentences]
    mapped = _bash_calls(body, bash)
    if name == "<main>":  # bash sets its EXIT trap first, install.ps1 its finally block last: both remove it at the end
        mapped, ps_calls = ([c for c in calls if c != "Remove-PackageStaging"] for calls in (mapped, ps_calls))
    not_called = set(mapped) - set(ps_calls) - CALLED_ELSEWHERE.get(name, set())
    assert not not_called, f"{name}: the PowerShell twin does not call {sorted(not_called)}"
    assert _in_same_order(mapped, ps_calls), f"{name}: bash calls {mapped}, PowerShell {ps_calls}"
    if name not in UNORDERED:
        assert _in_same_order(bash_sentences, ps_sentences), (
            f"{name}: bash says {bash_sentences}, PowerShell {ps_sentences}"
        )


def _outside_functions(tree: tree_sitter.Tree) -> list[tree_sitter.Node]:
    return [
        child
        for child in tree.root_node.children
        if child.type != "param_block"
        for child in ([child] if child.type != "statement_list" else child.children)
        if child.type != "function_statement"
    ]


def _ps_sentences_outside_functions(tree, source, constants) -> list[str]:
    return [s for node in _outside_functions(tree) for s in _ps_sentences(node, source, constants)]


def _ps_calls_outside_functions(tree, source) -> list[str]:
    return [call for node in _outside_functions(tree) for call in _ps_calls(node, source)]


def test_unordered_twins_still_check_the_same_things():
    bash, _, ps, _ = _install_functions()
    for name in UNORDERED:
        node, source = ps[FUNCTION_TWINS[name]]
        assert {_to_windows(s) for s in _bash_sentences(bash[name], {})} == set(_ps_sentences(node, source, {}))


# --- the same patterns, the same verdicts --------------------------------------------------------------


def _net_pattern(pattern: str) -> re.Pattern:
    """A .NET pattern of the twins (ASCII classes, anchors, \\z), compiled by Python, which reads them alike."""
    assert "(?" not in pattern and "\\d" not in pattern and "\\w" not in pattern, pattern
    return re.compile(pattern.replace("\\z", "\\Z"))


def _bash_pattern(pattern: str) -> str:
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return pattern[:-1] + "\\z"


@functools.cache
def _ps_install() -> tuple[str, dict[str, str]]:
    tree, source = _tree("deployment_template/install.ps1")
    trust_tree, trust_source = _tree("scripts/package-trust.ps1")
    constants = _ps_constants(tree, source)
    constants.update(_ps_constants(trust_tree, trust_source))
    return source.decode(), constants


@functools.cache
def _ps_env_rules() -> list[tuple[set[str], tuple[int, int] | str, str]]:
    text, constants = _ps_install()
    rules = []
    for m in re.finditer(
        r"@\{ Names = ,? ?([^;]+); (?:Range = (\d+), (\d+)|Pattern = ('[^']*'|\$\w+)); Rule = '([^']+)' \}", text
    ):
        names = set(re.findall(r"'([A-Z_]+)'", m.group(1)))
        check = (
            (int(m.group(2)), int(m.group(3)))
            if m.group(2)
            else (m.group(4)[1:-1] if m.group(4).startswith("'") else constants[m.group(4).lower()])
        )
        rules.append((names, check, m.group(5)))
    return rules


def _bash_env_rules() -> list[tuple[set[str], tuple[int, int] | str, str]]:
    lib = _read("scripts/lib.sh").replace("\\\n", " ")
    body = _bash_functions(lib)[0]["check_env_value"]
    constants = {m.group(1): m.group(2) for m in re.finditer(r"(?m)^([A-Z_]+)='([^']*)'", lib)}
    rules = []
    for m in re.finditer(r"(?m)^\s*([A-Z_|]+)\)\s*(.*?)\s*\|\|\s*rule=\"([^\"]+)\"", body):
        test = m.group(2)
        if r := re.search(r'in_range "\$\{value\}" (\d+) (\d+)', test):
            check = (int(r.group(1)), int(r.group(2)))
        elif r := re.search(r"=~ (\S+) \]\]", test):
            pattern = r.group(1)
            check = _bash_pattern(constants[pattern[2:-1]] if pattern.startswith("${") else pattern)
        else:
            words = re.findall(r"== (\w+)", test)
            assert words, test
            check = "^(" + "|".join(words) + ")\\z"
        rules.append((set(m.group(1).split("|")), check, m.group(3)))
    return rules


def test_env_rules_are_check_env_values():
    bash = sorted((sorted(names), check, rule) for names, check, rule in _bash_env_rules())
    ps = sorted((sorted(names), check, rule) for names, check, rule in _ps_env_rules())
    assert len(bash) >= 12 and ps == bash
    lib = _read("scripts/lib.sh")
    _, constants = _ps_install()
    assert constants["$envvaluechars"] == re.search(r"(?m)^ENV_VALUE_CHARS='([^']*)'", lib).group(1)
    assert constants["$envvaluegtkeys"] == re.search(r"(?m)^ENV_VALUE_GT_KEYS='([^']*)'", lib).group(1)


def _ps_env_verdict(name: str, value: str) -> str:
    """Test-EnvValue's verdict, from install.ps1's own character set and rules: 'ok', 'chars' or the rule."""
    _, constants = _ps_install()
    allowed = constants["$envvaluechars"] + (">" if name in constants["$envvaluegtkeys"].split() else "")
    if len(value) > 1024 or any(c not in allowed for c in value):
        return "chars"
    if not value:
        return "ok"
    for names, check, rule in _ps_env_rules():
        if name not in names:
            continue
        if isinstance(check, tuple):
            good = bool(re.fullmatch(r"0|[1-9][0-9]{0,5}", value)) and check[0] <= int(value) <= check[1]
        else:
            good = bool(_net_pattern(check).match(value))
        if not good:
            return rule
    return "ok"


ENV_VALUES = (
    [("HTTPS_PORT", v) for v in ("443", "0", "65535", "65536", "0443", "443\r", "443\n", "+443", "443 ", "١٢٣")]
    + [("BIND_ADDRESS", v) for v in ("0.0.0.0", "10.0.0.256", "10.0.0.1\n", "010.0.0.1", "10.0.0.1:22", "::1")]
    + [
        ("TLS_HOSTNAME", v)
        for v in (
            "chexnet.local",
            "chexnet.local\nevil",
            "-x",
            "x-",
            "a" * 253,
            "a" * 254,
            "x;y",
            "x y",
            "chexnet.local$(id)",
            "chexnet.local`id`",
            "é.local",
            "chexnet.local\u212a",
        )
    ]
    + [("NGINX_RATE_LIMIT", v) for v in ("20r/s", "20r/h", "0r/s", "20r/s\n")]
    + [("NGINX_RATE_BURST", v) for v in ("0", "999999", "1000000", "-1")]
    + [("API_MEM_LIMIT", v) for v in ("3g", "4096m", "3G", "3gb", "0g")]
    + [("CHEXNET_VARIANT", v) for v in ("cpu", "gpu", "CPU", "cpu\n", "tpu")]
    + [("CHEXNET_VERSION", v) for v in ("0.1.0", "1.0.0+build.1", ".1", "0.1.0\n", "a" * 65)]
    + [("COMPOSE_PROFILES", v) for v in ("dicom", "dicom,extra", "dicom,", "DICOM", ",".join(["p"] * 9))]
    + [("API_REPLICAS", v) for v in ("1", "99", "100")]
    + [("CHEXNET_MODELS", v) for v in ("cxr10,cxr14", "cxr10\nEVIL=1", "cxr10'", 'cxr10"', "x" * 1024, "x" * 1025, "")]
    + [("CHEXNET_MODELS", "cxr10>x")]
    + [
        ("CHEXNET_PRIORITY_RULES", v)
        for v in ("pneumothorax>=0.7:stat,cxr10:mass>=0.5:urgent", "mass>=0.5:stat;id", "mass>=0.5:stat\n", "a<b")
    ]
)


def test_env_values_get_the_same_verdict_from_both_twins(tmp_path):
    """bash's check_env_value, run, against the PowerShell twin's rules, value for value (hostile ones too)."""
    script = (
        'source "$1"; DIR="$2"; shift 2\n'
        'while [[ $# -gt 0 ]]; do (check_env_value "$1" "$2" && echo "ok") 2>&1 | tail -n 1; printf "\\0"; shift 2; done'
    )
    arguments = [item for pair in ENV_VALUES for item in pair]
    result = subprocess.run(
        ["bash", "-c", script, "bash", str(ROOT / "scripts/lib.sh"), str(tmp_path), *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    outputs = result.stdout.split("\0")[:-1]
    assert len(outputs) == len(ENV_VALUES), result.stderr
    for (name, value), output in zip(ENV_VALUES, outputs, strict=True):
        output = output.strip()
        bash = (
            "ok"
            if output == "ok"
            else "chars"
            if "may hold only" in output
            else output.split(" must be ")[-1].rstrip(".")
        )
        assert _ps_env_verdict(name, value) == bash, (name, value, output)


def _ps_sums_verdict(data: bytes) -> str:
    """Test-SumsLines's verdict, from package-trust.ps1's own patterns: 'ok', 'line' or 'twice'."""
    _, constants = _ps_install()
    trust = _read("scripts/package-trust.ps1")
    dots = re.search(r"\$line -cmatch '(\(  \|/\)[^']*)'", trust).group(1)
    test_sums = _text(
        _ps_functions(*_tree("scripts/package-trust.ps1"))["Test-SumsLines"], _tree("scripts/package-trust.ps1")[1]
    )
    comparer = re.search(r"\[System\.StringComparer\]::(\w+)", test_sums).group(1)
    if not data:
        return "line"
    text = data.decode("latin-1")
    lines = text.removesuffix("\n").split("\n")
    if any(
        not _net_pattern(constants["$script:sumsline"]).match(line) or _net_pattern(dots).search(line) for line in lines
    ):
        return "line"
    paths = [line[66:].lower() if comparer == "OrdinalIgnoreCase" else line[66:] for line in lines]
    assert comparer in ("OrdinalIgnoreCase", "Ordinal"), comparer  # not a culture's: one whose 'I' is not 'i
    return "twice" if len(set(paths)) != len(paths) else "ok"


H = b"ab" * 32
SUMS_FILES = {
    "plain": H + b"  images/api.tar.gz\n" + H + b"  VERSION\n",
    "no final LF": H + b"  VERSION",
    "CRLF": H + b"  VERSION\r\n",
    "CR inside": H + b"  VER\rSION\n",
    "BOM": b"\xef\xbb\xbf" + H + b"  VERSION\n",
    "NUL": H + b"  VERSION\x00\n",
    "upper-case hash": H.upper() + b"  VERSION\n",
    "one space": H + b" VERSION\n",
    "three spaces": H + b"   VERSION\n",
    "dot-dot": H + b"  images/../VERSION\n",
    "dot part": H + b"  ./VERSION\n",
    "trailing dot-dot": H + b"  images/..\n",
    "absolute": H + b"  /etc/passwd\n",
    "backslash": H + b"  images\\api.tar.gz\n",
    "empty line": H + b"  VERSION\n\n",
    "empty": b"",
    "only LF": b"\n",
    "space in name": H + b"  my file\n",
    "non-ASCII": H + b"  caf\xc3\xa9\n",
    "twice": H + b"  VERSION\n" + H + b"  VERSION\n",
    "twice, other case": H + b"  license/keys/a.pem\n" + H + b"  LICENSE/keys/A.pem\n",
    "dotted name": H + b"  .hidden\n" + H + b"  a..b\n",
}


def test_sums_files_get_the_same_verdict_from_both_twins(tmp_path):
    """bash's check_sums_lines, run, against the PowerShell twin's parsing, file for file (hostile ones too)."""
    for name, data in SUMS_FILES.items():
        sums = tmp_path / "SHA256SUMS"
        sums.write_bytes(data)
        result = subprocess.run(
            [
                "bash",
                "-c",
                'source "$1"; source "$2"; check_sums_lines "$3" && echo ok',
                "bash",
                str(ROOT / "scripts/lib.sh"),
                str(ROOT / "scripts/package-trust.sh"),
                str(sums),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        bash = "ok" if result.stdout == "ok\n" else "twice" if "more than once" in result.stderr else "line"
        assert "is not '<sha256>" in result.stderr or bash != "line", (name, result.stderr)
        assert _ps_sums_verdict(data) == bash, (name, result.stderr)


def test_path_and_package_patterns_are_bash_s():
    trust_sh = _read("scripts/package-trust.sh")
    install_sh = _read("deployment_template/install.sh")
    text, constants = _ps_install()
    text += _read("scripts/package-trust.ps1")
    assert constants["$script:sumsline"] == _bash_pattern(re.search(r"(?m)^SUMS_LINE='([^']*)'", trust_sh).group(1))
    assert "(  |/)\\.\\.?(/|\\z)" in _read("scripts/package-trust.ps1") and "(  |/)\\.\\.?(/|$)" in trust_sh
    chars = re.search(r"(?m)^PORTABLE_PATH_CHARS='([^']*)'", trust_sh).group(1)
    portable = _net_pattern(constants["$script:portablepath"])
    assert all(portable.match(c) for c in chars) and not any(
        portable.match(chr(c)) for c in range(256) if chr(c) not in chars
    )
    # SEQUENCE, VERSION and VARIANT as package_value reads them.
    bash_values = {
        m.group(1): _bash_pattern(m.group(2))
        for m in re.finditer(r"package_value (\w+) '([^']*)'", trust_sh + install_sh)
    }
    ps_values = {m.group(1): m.group(2) for m in re.finditer(r"Get-PackageValue '(\w+)' '([^']*)'", text)}
    ps_values |= {
        m.group(1): constants[m.group(2).lower()] for m in re.finditer(r"Get-PackageValue '(\w+)' (\$script:\w+)", text)
    }
    assert set(bash_values) == {"SEQUENCE", "VERSION", "VARIANT"} and ps_values == bash_values


def test_option_patterns_are_install_sh_s():
    install_sh = _read("deployment_template/install.sh")
    loop = install_sh[install_sh.index('case "$1" in') : install_sh.index("esac")]
    bash = {_bash_pattern(p) for p in re.findall(r'\[\[ "\$2" =~ (\S+)', loop)}
    text, constants = _ps_install()
    ps = set(re.findall(r"-cnotmatch '([^']*)'", text)) | {constants["$dnsname"], constants["$ipv4"]}
    assert len(bash) >= 7 and bash <= ps, sorted(bash - ps)


def test_env_lines_are_read_as_check_site_env_reads_them():
    lib = _read("scripts/lib.sh")
    text, _ = _ps_install()
    for pattern in re.findall(r'\[\[ "\$\{line\}" =~ (\^[^ ]+\$) \]\]', lib):
        windows = _bash_pattern(pattern).replace("[[:blank:]]", "[ \\t]")
        assert f"'{windows}'" in text, windows


# --- what issue 25 found in the Windows twins, read from the syntax trees ---------------------------------

PATH_CMDLETS = {
    "Get-Item",
    "Get-ChildItem",
    "Test-Path",
    "Remove-Item",
    "Copy-Item",
    "Move-Item",
    "Rename-Item",
    "Get-Content",
    "Set-Content",
    "Add-Content",
    "Clear-Content",
    "Out-File",
    "Push-Location",
    "Set-Location",
    "Get-FileHash",
    "Get-Acl",
    "Set-Acl",
    "Resolve-Path",
    "New-Item",
    "Split-Path",
    "Import-Csv",
    "Export-Csv",
}


def _commands(path: str):
    tree, source = _tree(path)
    for command in _nodes(tree.root_node, "command"):
        yield _ps_command_name(command, source), _text(command, source), command, source


@pytest.mark.parametrize("path", _ps1_files())
def test_paths_are_taken_literally(path):
    """-Path (and a positional path) expands wildcards: '[1]' in an unpacked folder's name reads another one."""
    for name, text, _, _ in _commands(path):
        if name in PATH_CMDLETS:
            assert re.search(r"\s-LiteralPath\s", text) and not re.search(r"\s-Path\s", text), f"{path}: {text}"


@pytest.mark.parametrize("path", _ps1_files())
def test_scripts_are_dot_sourced_from_their_text(path):
    """'. PATH' reads '[1]' in the unpacked folder's name as a wildcard under Windows PowerShell 5.1 (PowerShell
    issue 4726) and can load another folder's file: a script is dot-sourced from the text read at its path."""
    tree, source = _tree(path)
    for command in _nodes(tree.root_node, "command"):
        operator = next((c for c in command.children if c.type == "command_invokation_operator"), None)
        if operator is not None and _text(operator, source) == ".":
            assert _text(command, source).startswith(". ([scriptblock]::Create([System.IO.File]::ReadAllText("), (
                f"{path}:{command.start_point[0] + 1}: {_text(command, source)}"
            )


@pytest.mark.parametrize("path", _ps1_files())
def test_folders_are_listed_with_hidden_files(path):
    for name, text, _, _ in _commands(path):
        if name == "Get-ChildItem":
            assert re.search(r"\s-Force\b", text), f"{path}: {text} leaves hidden files out"


@pytest.mark.parametrize("path", _ps1_files())
def test_access_is_granted_by_well_known_sid(path):
    tree, source = _tree(path)
    for comment in sorted(_nodes(tree.root_node, "comment"), key=lambda n: -n.start_byte):
        source = source[: comment.start_byte] + source[comment.end_byte :]  # the code, not what its comments say
    text = source.decode()
    assert "NTAccount" not in text and "BUILTIN\\" not in text and "NT AUTHORITY\\" not in text
    if path in ("scripts/package-trust.ps1",):
        assert "'S-1-5-32-544'" in text and "'S-1-5-18'" in text and "SetAccessRuleProtection($true, $false)" in text


@pytest.mark.parametrize("path", _ps1_files())
def test_no_native_error_stream_is_redirected_under_stop(path):
    """Windows PowerShell 5.1 turns a native command's redirected error stream into a terminating error while
    $ErrorActionPreference is 'Stop': each redirection sits in a function that sets 'Continue' first."""
    tree, source = _tree(path)
    # The grammar reads '2>$null' written without a space as a bare word, not as a redirection: both are looked at.
    redirections = [
        node
        for node in _nodes(tree.root_node, "redirection", "generic_token")
        if node.type == "redirection" or re.match(r"[1-6*]?>", _text(node, source))
    ]
    assert redirections or path not in ("deployment_template/install.ps1", "scripts/preflight.ps1")
    for redirection in redirections:
        if not re.match(r"\s*([2-6*]>|[1-6*]?>&[12])", _text(redirection, source)) and "$null" not in _text(
            redirection, source
        ):
            continue  # stdout into a file is no native error stream
        node = redirection
        while node is not None and node.type != "function_statement":
            node = node.parent
        body = _text(node, source) if node is not None else ""
        assert "$ErrorActionPreference = 'Continue'" in body, (
            f"{path}:{redirection.start_point[0] + 1}: {_text(redirection.parent, source)[:80]}"
        )


@pytest.mark.parametrize("path", _ps1_files())
def test_no_variable_is_spelt_two_ways_in_one_function(path):
    """PowerShell's names ignore case: a loop's $sid is the parameter $Sid (New-PrivateSecurity granted the
    wrong SID that way). Within a function, and within the script's own lines, one spelling per variable."""
    tree, source = _tree(path)
    functions = list(_nodes(tree.root_node, "function_statement"))
    scopes = [(_text(next(_nodes(f, "function_name")), source), [f]) for f in functions]
    scopes.append(("the script's own lines", _outside_functions(tree)))
    for name, nodes in scopes:
        spellings: dict[str, set[str]] = {}
        for node in nodes:
            for variable in _nodes(node, "variable"):
                if _inside_function(variable, node):
                    continue
                m = re.match(r"[$@]((?:script|global):)?([A-Za-z_][A-Za-z0-9_]*)", _text(variable, source))
                if m and not m.group(1):
                    spellings.setdefault(m.group(2).lower(), set()).add(m.group(2))
        assert not [s for s in spellings.values() if len(s) > 1], (
            f"{path}, {name}: {[s for s in spellings.values() if len(s) > 1]}"
        )


def _inside_function(node: tree_sitter.Node, top: tree_sitter.Node) -> bool:
    """node sits in a function nested in top (a nested function is a scope of its own)."""
    node = node.parent
    while node is not None and node != top:
        if node.type == "function_statement":
            return True
        node = node.parent
    return False


def test_env_is_written_as_utf8_without_bom_with_lf():
    tree, source = _tree("deployment_template/install.ps1")
    text = source.decode()
    for name, command_text, _, _ in _commands("deployment_template/install.ps1"):
        assert name not in ("Set-Content", "Add-Content", "Out-File"), command_text
    assert "WriteAllLines" not in text and "AppendAllText" not in text
    writes = re.findall(r"\[System\.IO\.File\]::WriteAllText\(([^\n]*)\)", text)
    assert writes and all("(New-Object System.Text.UTF8Encoding $false)" in w for w in writes), writes
    write_env = _text(_ps_functions(tree, source)["Write-EnvLines"], source)
    assert '-join "`n"' in write_env and "$envFile" in write_env


def test_a_failed_upgrade_is_rolled_back_whatever_failed():
    """Everything after the snapshot runs inside one try whose failure leads to Restore-Snapshot."""
    tree, source = _tree("deployment_template/install.ps1")
    main = "".join(_text(node, source) for node in _outside_functions(tree))
    after = main[main.index("Save-Snapshot") :]
    block = after[after.index("try {") : after.index("Restore-Snapshot")]
    assert "Set-Configuration" in block and "Start-Version $version" in block and "catch" in block
    start = _text(_ps_functions(tree, source)["Start-Version"], source)
    assert "Test-RunningVersion $Value" in start, "success only when every container runs the new version"
