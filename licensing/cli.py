"""``python -m licensing``: keygen, package-keygen, issue, verify, inspect, revoke, host-uuid, hash-password, serve."""

import argparse
import json
import sys
from pathlib import Path

import jwt

from licensing.errors import LicenseError
from licensing.host import DEFAULT_UUID_FILE, read_host_uuid
from licensing.keys import TrustedKeys, generate, load_private_key
from licensing.tokens import DEFAULT_LEEWAY_S


def _keygen(args) -> int:
    private, public, kid = generate(Path(args.out))
    print(f"private key (keep it offline, mode 600): {private}\npublic key: {public}\nkid: {kid}")
    print(f"for key rotation, install the public key on servers as <key dir>/{kid}.pem", file=sys.stderr)
    return 0


def _package_keygen(args) -> int:
    from licensing.package_key import generate_package_key

    private, cert, fingerprint = generate_package_key(Path(args.out))
    print(
        f"package signing key (keep it offline, mode 600): {private}\ncertificate (ships to sites out of band): {cert}"
        f"\nfingerprint (print it on the delivery note): {fingerprint}"
    )
    return 0


def _issue(args) -> int:
    from licensing.tokens import bound_to, issue_token

    try:
        product_uuids = bound_to(args.product_uuid)
    except ValueError as exc:
        raise SystemExit(f"error: --product-uuid: {exc}.") from None
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    print(
        issue_token(
            load_private_key(args.key),
            product_uuid=product_uuids,
            customer=args.customer,
            subject=args.subject,
            days=args.days,
            features=features,
            kid=args.kid,
        )
    )
    return 0


def _verify(args) -> int:
    from licensing.revocation import RevocationWatcher
    from licensing.tokens import TokenVerifier

    keys = TrustedKeys(args.public_key)
    host = args.product_uuid or read_host_uuid(args.product_uuid_file)
    revocations = RevocationWatcher(args.revocation_list, keys) if args.revocation_list else None
    if revocations is not None and revocations.error:
        raise LicenseError(revocations.error)
    claims = TokenVerifier(keys, host, leeway=args.leeway, revocations=revocations).verify(args.token.strip())
    print(json.dumps(claims.raw, indent=2, ensure_ascii=False))
    return 0


def _inspect(args) -> int:
    token = args.token.strip()
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise SystemExit(f"error: not a JWT ({exc}).") from None
    print(json.dumps({"verified": False, "header": header, "claims": claims}, indent=2, ensure_ascii=False))
    return 0


def _revoke(args) -> int:
    from licensing.revocation import sign_revocation_list, verify_revocation_list

    jtis, subs, after = set(args.jti), set(args.sub), 0
    if args.merge:
        if not args.public_key:
            raise SystemExit("error: --merge needs --public-key to verify the existing list.")
        old = verify_revocation_list(Path(args.merge).read_text(encoding="ascii"), TrustedKeys(args.public_key))
        jtis |= old.jtis
        subs |= old.subs
        after = old.seq  # the new list always supersedes the one it merges, whatever the clocks say
    text = sign_revocation_list(load_private_key(args.key), jtis, subs, kid=args.kid, after=after)
    Path(args.out).write_text(text + "\n", encoding="ascii")
    print(f"revocation list with {len(jtis)} jti and {len(subs)} sub written to {args.out}", file=sys.stderr)
    return 0


def _host_uuid(args) -> int:
    print(read_host_uuid(args.file))
    return 0


def _hash_password(args) -> int:
    import getpass

    from werkzeug.security import generate_password_hash

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise SystemExit("error: use a password of at least 12 characters.")
    print(generate_password_hash(password))
    return 0


def _serve(args) -> int:
    from licensing.registry.server import serve

    return serve()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m licensing", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="create an Ed25519 vendor key pair")
    p.add_argument("--out", required=True, help="directory for vendor_private.pem and vendor_public.pem")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("package-keygen", help="create the RSA key that signs offline packages, and its certificate")
    p.add_argument("--out", required=True, help="directory for package_signing.key and vendor_package.crt")
    p.set_defaults(func=_package_keygen)

    p = sub.add_parser("issue", help="sign a licence token (printed on stdout)")
    p.add_argument("--key", required=True, help="vendor_private.pem (must be mode 600)")
    p.add_argument(
        "--product-uuid",
        required=True,
        action="append",
        help="the server's product_uuid (scripts/product-uuid.sh); repeat it for a cluster licence, "
        "once per node (scripts/swarm-node.sh prints each)",
    )
    p.add_argument("--customer", required=True)
    p.add_argument("--subject", required=True, help="the client, e.g. the PACS integrator")
    p.add_argument("--days", required=True, type=float)
    p.add_argument("--features", default="cxr10,cxr25", help="comma list of licensed model ids")
    p.add_argument("--kid", help="key id header (default: the key's fingerprint)")
    p.set_defaults(func=_issue)

    p = sub.add_parser("verify", help="verify a token: exit 0 and claims JSON, else the reason")
    p.add_argument("--public-key", required=True, help="vendor public key file or directory of <kid>.pem")
    p.add_argument("--product-uuid", help="the server to check against (default: this host's)")
    p.add_argument("--product-uuid-file", default=DEFAULT_UUID_FILE)
    p.add_argument("--revocation-list")
    p.add_argument("--leeway", type=float, default=DEFAULT_LEEWAY_S, help="clock drift allowed, seconds")
    p.add_argument("token")
    p.set_defaults(func=_verify)

    p = sub.add_parser("inspect", help="print a token's header and claims WITHOUT verifying it")
    p.add_argument("token")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("revoke", help="write a vendor-signed revocation list")
    p.add_argument("--key", required=True)
    p.add_argument("--jti", action="append", default=[], help="token id to revoke (repeatable)")
    p.add_argument("--sub", action="append", default=[], help="client to revoke (repeatable)")
    p.add_argument("--merge", help="an existing list to extend")
    p.add_argument("--public-key", help="to verify --merge")
    p.add_argument("--kid")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_revoke)

    p = sub.add_parser("host-uuid", help="this host's normalised product_uuid")
    p.add_argument("--file", default=DEFAULT_UUID_FILE)
    p.set_defaults(func=_host_uuid)

    p = sub.add_parser("hash-password", help="hash a staff password (stdin) for LICENSING_USERS_FILE")
    p.set_defaults(func=_hash_password)

    p = sub.add_parser("serve", help="the vendor's token registration service (settings from LICENSING_* env)")
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LicenseError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
