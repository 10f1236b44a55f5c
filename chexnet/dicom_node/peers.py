"""What a peer sends (AE titles, addresses, UIDs, error comments) reaches a log line only through
:func:`shown`: bounded, with anything not printable ASCII escaped."""


def shown(value: object, limit: int = 64) -> str:
    text = str(value)
    escaped = "".join(c if c.isascii() and c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return escaped + ("…" if len(text) > limit else "")
