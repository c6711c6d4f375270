"""TLS for ``wss://`` and ``https://`` on the listening port, without a reverse proxy.

Modern defaults: TLS 1.2 or newer, no compression, ALPN ``http/1.1``. The certificate and
key are read again on reload (a certbot renewal): the running context gets the new chain,
so new handshakes present it while established connections carry on.
"""

from __future__ import annotations

import ssl

from gateway.errors import ConfigError


def _load(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"server.tls_cert_file, server.tls_key_file: {exc.filename}: not found"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"server.tls_cert_file, server.tls_key_file: cannot load the certificate and key: {exc}"
        ) from None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with ``cert_file`` (PEM chain) and ``key_file`` (PEM key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    _load(context, cert_file, key_file)
    return context


def reload(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load a new chain into the running ``context``; ConfigError, changing nothing, when it
    cannot be loaded (it is tried on a scratch context first)."""
    server_context(cert_file, key_file)
    _load(context, cert_file, key_file)
