"""One SMTP load run for `make bench`: N concurrent senders, each on its own connection
(STARTTLS, verified), sending its messages one after another. Standard library only: it
also runs on a lab host, under Debian's python3 (program on stdin, arguments in argv[1]).

argv[1] is JSON: ip, port, name (the certificate's name), source (address to bind or
null), helo, cafile (or null: the system's store), senders, per_sender, mail_from, rcpt,
run (a token in every Message-ID). Prints JSON: one [message-id, t_start, t_accepted,
error] per message (wall-clock seconds: the lab's hosts share this machine's clock)."""

import json
import smtplib
import socket
import ssl
import sys
import threading
import time
from email.utils import formatdate

BODY = "A message of an ordinary size for the benchmark.\r\n" * 60


class Client(smtplib.SMTP):
    """Connects to an IP but verifies TLS against a name."""

    def __init__(self, name, ip, port, source, helo):
        self._ip = ip
        super().__init__(name, port, local_hostname=helo, timeout=120, source_address=(source, 0) if source else None)

    def _get_socket(self, host, port, timeout):
        return socket.create_connection((self._ip, port), timeout, self.source_address)


def main() -> None:
    a = json.loads(sys.argv[1])
    ctx = ssl.create_default_context(cafile=a.get("cafile"))
    results, lock = [], threading.Lock()
    # Every sender connects and finishes its TLS handshake first; the clock starts together.
    ready = threading.Barrier(a["senders"])
    domain = a["mail_from"].split("@")[1]

    def sender(k: int) -> None:
        out = []
        try:
            c = Client(a["name"], a["ip"], a["port"], a.get("source"), a["helo"])
            c.starttls(context=ctx)
            c.ehlo()
            ready.wait(120)
            for i in range(a["per_sender"]):
                mid = f"<{a['run']}-{k}-{i}@{domain}>"
                msg = (
                    f"From: {a['mail_from']}\r\nTo: {a['rcpt']}\r\nSubject: bench {a['run']} {k}-{i}\r\n"
                    f"Message-ID: {mid}\r\nDate: {formatdate()}\r\n\r\n{BODY}"
                )
                t0 = time.time()
                try:
                    c.sendmail(a["mail_from"], [a["rcpt"]], msg)
                    out.append([mid, t0, time.time(), None])
                except smtplib.SMTPException as exc:
                    out.append([mid, t0, None, str(exc)])
            c.quit()
        except Exception as exc:  # reported, counted as not sent
            out.append([None, time.time(), None, f"{type(exc).__name__}: {exc}"])
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(a["senders"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
