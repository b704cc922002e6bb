"""Where the sidecar's bearer token comes from, for the client and the CLI alike (no gRPC import: the
CLI speaks HTTP only)."""
import os


def resolve_token(token=None):
    """The sidecar's bearer token: ``token``, else $TRAINGUARD_TOKEN, else the file named by
    $TRAINGUARD_TOKEN_FILE or mounted at /var/run/secrets/trainguard/token; None when there is none (the
    Unix socket needs none)."""
    token = token or os.environ.get("TRAINGUARD_TOKEN")
    path = os.environ.get("TRAINGUARD_TOKEN_FILE", "/var/run/secrets/trainguard/token")
    if not token and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    return token or None
