"""A relay that requires TLS and AUTH, built on aiosmtpd (PyPI), for Pulse's transport tests.

Two listeners share one handler: STARTTLS required on --starttls-port, implicit TLS on
--implicit-port; both refuse MAIL before a successful AUTH (PLAIN or LOGIN) with --user and
--password. Every accepted message is appended to --out as one JSON line. Prints "ready" once
both listen; runs until killed.
"""

import argparse
import json
import ssl
import sys
import threading
import warnings

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Record:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        line = json.dumps(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": envelope.content.decode("utf8", errors="replace"),
                "tls": server.transport.get_extra_info("ssl_object") is not None,
                "login": (session.auth_data.login.decode()
                          if isinstance(session.auth_data, LoginPassword) else None),
            }
        )
        with self.lock, open(self.path, "a", encoding="utf8") as out:
            out.write(line + "\n")
        return "250 OK queued"


def main():
    p = argparse.ArgumentParser()
    for name in ("cert", "key", "user", "password", "out"):
        p.add_argument("--" + name, required=True)
    p.add_argument("--starttls-port", type=int, required=True)
    p.add_argument("--implicit-port", type=int, required=True)
    args = p.parse_args()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == args.user.encode()
              and auth_data.password == args.password.encode())
        # handled=False: aiosmtpd itself answers a failure with 535.
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    handler = Record(args.out)
    starttls = Controller(handler, hostname="127.0.0.1", port=args.starttls_port,
                          tls_context=context, require_starttls=True, auth_required=True,
                          auth_require_tls=True, authenticator=authenticator)
    # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; this listener is TLS throughout.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    implicit = Controller(handler, hostname="127.0.0.1", port=args.implicit_port,
                          ssl_context=context, auth_required=True, auth_require_tls=False,
                          authenticator=authenticator)
    starttls.start()
    implicit.start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    finally:
        starttls.stop()
        implicit.stop()


if __name__ == "__main__":
    sys.exit(main())
