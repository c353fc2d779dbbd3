"""The Python client (clients/python/ragkv_client.py) against a real ragkvd.

Run by CTest with RAGKVD pointing at the built daemon and PYTHONPATH at clients/python.
"""
import os
import shutil
import signal
import sys
import subprocess
import tempfile
import unittest

import ragkv_client as rk


def models_dir():
    d = os.environ.get("RAGKV_TEST_MODELS") or os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "shared", "models")
    return d if os.path.exists(os.path.join(d, "stories260K.bin")) else None


class DaemonTest(unittest.TestCase):
    extra = []

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ragkv-py-")
        cls.proc = subprocess.Popen(
            [os.environ["RAGKVD"], "--port", "0", "--http-port", "0", "--data-dir",
             os.path.join(cls.tmp, "var"), "--workers", "2"] + cls.extra,
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


@unittest.skipUnless(models_dir(), "skipped: no real model")
class ModelTest(DaemonTest):
    """GENERATE and the example pipeline on the real model."""
    extra = ["--model", os.path.join(models_dir() or ".", "stories260K.bin")]

    def admin_token(self):
        with open(os.path.join(self.tmp, "var", "admin.token")) as f:
            return f.read().strip()

    def tenant(self, name):
        with self.client() as a:
            a.auth(self.admin_token())
            return a.tenant_create(name)

    def test_generate_greedy_story(self):
        tok = self.tenant("py1")
        with self.client() as c:
            self.assertEqual(c.auth(tok)["tenant"], "py1")
            stats = {}
            out = []
            for piece in c.generate([], [403, 407, 261, 378], max_tokens=12, blend="full", stats=stats):
                out += piece
            # the model's documented greedy continuation of "Once upon a time": ", there was a little girl"
            sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python"))
            from llama2_tokenizer import Tokenizer
            text = Tokenizer(os.path.join(models_dir(), "tok512.bin")).decode(out, 378)
            self.assertTrue(text.startswith(", there was a little girl named Lily"), text)
            self.assertEqual(stats["prompt_tokens"], 5)
            # and exactly the tokens `ragkv generate` produces for the same prompt
            tin = os.path.join(self.tmp, "in.txt")
            tout = os.path.join(self.tmp, "out.txt")
            with open(tin, "w") as f:
                f.write("1\n403\n407\n261\n378\n")
            subprocess.run([os.environ["RAGKV"], "generate", "--model", os.path.join(models_dir(), "stories260K.bin"),
                            "--tokens-in", tin, "--steps", str(5 + 12), "--tokens-out", tout],
                           check=True, capture_output=True)
            ref = [int(x) for x in open(tout).read().split()][5:]
            self.assertEqual(out, ref[:len(out)])
            self.assertEqual(len(out), 12)

    def test_example_pipeline_end_to_end(self):
        tok = self.tenant("py2")
        example = os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python", "example_rag.py")
        r = subprocess.run([sys.executable, example, "--port", str(self.port), "--token", tok,
                            "--tokenizer", os.path.join(models_dir(), "tok512.bin"), "--max-tokens", "24"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(len(r.stdout.strip()), 10)
        self.assertIn("retrieved: Lily had a red ball", r.stderr)
        self.assertIn("time to first token", r.stderr)


if __name__ == "__main__":
    unittest.main()
