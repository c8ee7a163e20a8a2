"""oauthgate.systemd: the sd_notify messages, over real UNIX datagram sockets."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.systemd import Notifier, message, socket_address


class MessageTests(SynchronousTestCase):
    def test_a_message_is_newline_terminated_key_value_lines(self) -> None:
        self.assertEqual(message(READY="1", STATUS="Serving"), b"READY=1\nSTATUS=Serving\n")

    def test_a_value_with_a_newline_is_refused(self) -> None:
        self.assertRaises(ValueError, message, STATUS="two\nlines")

    def test_an_at_sign_names_an_abstract_socket(self) -> None:
        self.assertEqual(socket_address("@oauthgate/notify"), b"\0oauthgate/notify")
        self.assertEqual(socket_address("/run/systemd/notify"), "/run/systemd/notify")


class FromEnvironTests(SynchronousTestCase):
    def test_without_notify_socket_nothing_is_sent(self) -> None:
        notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"}, pid=1)
        self.assertFalse(notifier.enabled)
        self.assertIsNone(notifier.watchdog_interval)
        self.assertFalse(notifier.ready())

    def test_the_watchdog_pings_at_half_watchdog_usec(self) -> None:
        env = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000"}
        self.assertEqual(Notifier.from_environ(env, pid=1).watchdog_interval, 15.0)

    def test_a_watchdog_for_another_pid_is_not_ours(self) -> None:
        env = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}
        self.assertIsNone(Notifier.from_environ(env, pid=8).watchdog_interval)
        self.assertEqual(Notifier.from_environ(env, pid=7).watchdog_interval, 15.0)

    def test_a_malformed_watchdog_usec_means_no_watchdog(self) -> None:
        env = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "soon"}
        self.assertIsNone(Notifier.from_environ(env, pid=1).watchdog_interval)


class SendTests(SynchronousTestCase):
    def receiver(self, address: str | bytes) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.setblocking(False)
        return sock

    def test_ready_stopping_and_watchdog_reach_a_path_socket(self) -> None:
        folder = tempfile.mkdtemp(prefix="og-sd-")
        self.addCleanup(shutil.rmtree, folder, True)
        path = os.path.join(folder, "notify")
        sock = self.receiver(path)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path}, pid=1)
        self.assertTrue(notifier.ready("Serving"))
        self.assertTrue(notifier.watchdog())
        self.assertTrue(notifier.stopping())
        received = [sock.recv(1024) for _ in range(3)]
        self.assertEqual(received, [b"READY=1\nSTATUS=Serving\n", b"WATCHDOG=1\n", b"STOPPING=1\n"])

    def test_an_abstract_socket_receives_the_message(self) -> None:
        name = f"@oauthgate-unit-{os.getpid()}-{id(self)}"
        sock = self.receiver(b"\0" + name[1:].encode())
        self.assertTrue(Notifier.from_environ({"NOTIFY_SOCKET": name}, pid=1).status("hi"))
        self.assertEqual(sock.recv(1024), b"STATUS=hi\n")

    def test_a_socket_nobody_listens_on_is_logged_not_raised(self) -> None:
        folder = tempfile.mkdtemp(prefix="og-sd-")
        self.addCleanup(shutil.rmtree, folder, True)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": os.path.join(folder, "x")}, pid=1)
        self.assertFalse(notifier.ready())
