"""Alert notifiers against real local receivers: Airflow's SlackWebhookNotifier and HttpNotifier POST to an
HTTP server on loopback, its SmtpNotifier talks SMTP to a small server on loopback."""

from __future__ import annotations

import json
import socketserver
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wedsync_dr import alerts, catalog


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for smtplib: greeting, EHLO, MAIL, RCPT, DATA, QUIT."""

    mails: list[tuple[str, list[str], bytes]] = []

    def handle(self):
        self.wfile.write(b"220 localhost ESMTP test\r\n")
        sender, recipients = "", []
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 localhost\r\n")
            elif verb == b"MAIL":
                sender = line.decode().split(":", 1)[1].strip().strip("<>")
                self.wfile.write(b"250 OK\r\n")
            elif verb == b"RCPT":
                recipients.append(line.decode().split(":", 1)[1].strip().strip("<>"))
                self.wfile.write(b"250 OK\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                data = b""
                while (chunk := self.rfile.readline()) != b".\r\n":
                    data += chunk
                type(self).mails.append((sender, recipients, data))
                self.wfile.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


@pytest.fixture
def receivers(monkeypatch, stack):
    _Receiver.received, _Smtp.mails = [], []
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Smtp)
    for server in (http, smtp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    http_port, smtp_port = http.server_address[1], smtp.server_address[1]
    monkeypatch.setenv("AIRFLOW_CONN_WEDSYNC_ALERTS_SLACK", json.dumps(
        {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{http_port}/services/T000/B000/XXXX"}))
    monkeypatch.setenv("AIRFLOW_CONN_WEDSYNC_ALERTS_WEBHOOK", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": http_port, "schema": "http"}))
    monkeypatch.setenv("AIRFLOW_CONN_WEDSYNC_ALERTS_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
         "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 10}}))
    try:
        yield
    finally:
        http.shutdown()
        smtp.shutdown()
        http.server_close()
        smtp.server_close()


def test_a_critical_alert_goes_to_slack_email_and_the_webhook(receivers):
    sent = alerts.alert(severity="critical", kind="backup_failed", subject="vendor_data",
                        message="backup vendor_data-x has 1 validated copies, quorum is 2", backup_id="vendor_data-x")
    assert sorted(sent) == ["slack:wedsync_alerts_slack", "smtp:wedsync_alerts_smtp",
                            "webhook:wedsync_alerts_webhook"]
    by_path = dict(_Receiver.received)
    slack = by_path["/services/T000/B000/XXXX"]
    assert "backup_failed" in slack["text"] and "quorum is 2" in slack["text"]
    hook = by_path["/"]
    assert (hook["severity"], hook["kind"], hook["backup_id"]) == ("critical", "backup_failed", "vendor_data-x")
    (sender, recipients, data), = _Smtp.mails
    assert recipients == ["sre-oncall@wedsync.example"] and sender == "wedsync-dr@localhost"
    mail = message_from_bytes(data)
    assert mail["Subject"] == "[wedsync-dr CRITICAL] backup_failed: vendor_data"
    with catalog.connect() as conn:  # the local default still records it
        assert catalog.alerts(conn, kind="backup_failed", backup_id="vendor_data-x")


def test_thresholds_and_missing_connections_decide_who_hears_it(receivers, monkeypatch):
    # warning: not for email (critical only)
    assert sorted(alerts.notify(severity="warning", kind="backup_degraded", message="one copy missing")) == [
        "slack:wedsync_alerts_slack", "webhook:wedsync_alerts_webhook"]
    assert alerts.notify(severity="info", kind="cloud_health", message="aws is healthy again") == []
    monkeypatch.delenv("AIRFLOW_CONN_WEDSYNC_ALERTS_SLACK")  # no connection: that notifier is off
    assert alerts.notify(severity="critical", kind="drill_failed", message="drill failed") == [
        "smtp:wedsync_alerts_smtp", "webhook:wedsync_alerts_webhook"]
    assert len(_Smtp.mails) == 1


def test_a_broken_channel_does_not_silence_the_others(receivers, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WEDSYNC_ALERTS_SMTP", json.dumps(  # nothing listens on port 9
        {"conn_type": "smtp", "host": "127.0.0.1", "port": 9, "extra": {"disable_tls": True, "disable_ssl": True,
                                                                       "timeout": 2, "retry_limit": 0}}))
    sent = alerts.alert(severity="critical", kind="task_failed", subject="backup_assets.extract",
                        message="backup_assets.extract failed")
    assert sorted(sent) == ["slack:wedsync_alerts_slack", "webhook:wedsync_alerts_webhook"]
