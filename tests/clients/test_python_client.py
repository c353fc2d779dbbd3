"""The Python client (clients/python/ragkv_client.py) against a real ragkvd.

Run by CTest with RAGKVD pointing at the built daemon and PYTHONPATH at clients/python.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

import ragkv_client as rk


class DaemonTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ragkv-py-")
        cls.proc = subprocess.Popen(
            [os.environ["RAGKVD"], "--port", "0", "--http-port", "0", "--data-dir",
             os.path.join(cls.tmp, "var"), "--workers", "2"],
            stdout=subprocess.PIPE, text=True)
        line = cls.proc.stdout.readline()  # the ready line is the synchronisation event
        if not line.startswith("ragkvd ready:"):
            raise RuntimeError(f"ragkvd did not start: {line!r}")
        cls.port = int(line.split()[3].rsplit(":", 1)[1])

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        rc = cls.proc.wait(timeout=10)
        shutil.rmtree(cls.tmp, ignore_errors=True)
        assert rc == 0, f"ragkvd exited {rc}"

    def client(self):
        return rk.Client("127.0.0.1", self.port, timeout=10)

    def test_hello_and_ping(self):
        with self.client() as c:
            info = c.hello("unittest")
            self.assertEqual(info["version"], 1)
            self.assertTrue(info["server"].startswith("ragkvd "))
            self.assertEqual(info["max_frame"], 64 << 20)
            c.ping()

    def test_auth_gate_and_errors(self):
        with self.client() as c:
            with self.assertRaises(rk.RagkvError) as e:
                c.put_chunk([1, 2, 3])
            self.assertEqual(e.exception.name, "RK_ERR_AUTH")
            with self.assertRaises(rk.RagkvError) as e:
                c.tenant_create("acme")
            self.assertEqual(e.exception.name, "RK_ERR_AUTH")
            # a generate request is decoded (and valid) before the gate answers
            with self.assertRaises(rk.RagkvError) as e:
                list(c.generate([[5, 6]], query=[7], max_tokens=4))
            self.assertEqual(e.exception.name, "RK_ERR_AUTH")
            # an invalid one is refused by the decoder, naming the problem
            bad = rk.Client._prompt([], [], "full", 0.0, "") + b"\0" * 29
            with self.assertRaises(rk.RagkvError) as e:
                c.call(rk.OPS["GENERATE"], bad)
            self.assertEqual(e.exception.name, "RK_ERR_INVALID")
            self.assertIn("empty prompt", e.exception.message)
            c.ping()  # the connection survived every error

    def test_pipelining(self):
        with self.client() as c:
            ids = [c.send(rk.OPS["PING"]) for _ in range(100)]
            got = [c.recv()[2] for _ in ids]
            self.assertEqual(got, ids)


if __name__ == "__main__":
    unittest.main()
