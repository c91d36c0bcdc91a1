"""Sends one message with Python's smtplib, a real SMTP client, for Pulse's inbound tests.

Usage: smtp_send.py HOST PORT MAIL_FROM RCPT[,RCPT...] < message
MAIL_FROM may be empty (the null sender). With SMTP_CAFILE set, the client upgrades with
STARTTLS first and verifies the server's certificate against that CA ("tls": true in the
answer). Prints one JSON line: {"code": 250, "text": "..."} for an accepted message, else the
code and text of the refusal (a refused recipient, a refused message, a closed connection:
code 0).
"""

import json
import os
import smtplib
import ssl
import sys


def main() -> None:
    host, port, mail_from, rcpts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    message = sys.stdin.buffer.read()
    try:
        with smtplib.SMTP(host, port, timeout=60) as client:
            client.ehlo("tests.example")
            cafile = os.environ.get("SMTP_CAFILE")
            if cafile:
                client.starttls(context=ssl.create_default_context(cafile=cafile))
                client.ehlo("tests.example")
            code, text = client.mail(mail_from)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, mail_from)
            for rcpt in rcpts.split(","):
                code, text = client.rcpt(rcpt)
                if code not in (250, 251):
                    print(json.dumps({"code": code, "text": text.decode(errors="replace")}))
                    return
            code, text = client.data(message)
            tls = client.sock is not None and isinstance(client.sock, ssl.SSLSocket)
            print(json.dumps({"code": code, "text": text.decode(errors="replace"), "tls": tls}))
    except smtplib.SMTPResponseException as e:
        print(json.dumps({"code": e.smtp_code, "text": e.smtp_error.decode(errors="replace")}))
    except (smtplib.SMTPServerDisconnected, ConnectionError) as e:
        print(json.dumps({"code": 0, "text": str(e)}))


if __name__ == "__main__":
    main()
