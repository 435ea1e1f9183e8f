"""The README's examples, run as a new user would run them against ``volt up``.

Every fenced ``sh`` and ``python`` block is an example. ``run_examples`` runs
each one as a subprocess against a running Volt, after the substitutions a
reader makes (the real port for ``127.0.0.1:8080``, the key a command just
printed for ``volt_sk_live_...``, the key id it printed for ``key_2xGk...``);
a block it does not know how to run fails the test unless ``NOT_RUN`` says
why — so an example added to the README is tested or explained.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from volt.identity.api_key_format import ID_CHARS, KEY_ID_PREFIX

README = Path(__file__).resolve().parents[2] / "README.md"
DOCUMENTED_BASE = "http://127.0.0.1:8080"

NOT_RUN = {
    "./dev up": "the two commands themselves: `./dev test` is this suite, and `./dev up` runs "
                "`volt up`, which the test runs",
    "import json, pathlib, openai": "needs the credentials `volt login` saves after a person "
                                    "approves the device code in the console "
                                    "(tests/e2e/test_identity.py runs that flow)",
    "volt forge availability --metro fra": "needs a Kubernetes cluster and GPU hosts; "
                                           "tests/e2e/test_forge.py runs these commands "
                                           "against a real control plane",
    "volt vault racks reserve --metro fra --gpu-model H100 --nodes 4 --wait":
        "needs registered racks and their BMCs; tests/e2e/test_vault.py runs these commands "
        "against sushy-emulator BMCs",
}
"""Blocks not run, by their first line, and why."""


@dataclass(frozen=True)
class Example:
    language: str
    line: int
    code: str

    @property
    def first_line(self) -> str:
        return self.code.strip().splitlines()[0]


def examples() -> list[Example]:
    text = README.read_text()
    return [Example(m.group(1), text[:m.start()].count("\n") + 1, m.group(2))
            for m in re.finditer(r"^```(sh|python)\n(.*?)^```", text, re.S | re.M)]


@dataclass
class Reader:
    """What a reader has at hand: the running Volt, and what commands printed."""

    base_url: str
    """``http://127.0.0.1:<port>``, no ``/v1``."""
    api_key: str
    data_dir: Path
    work_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    """Live keys, the newest last (the banner's, then any a command printed)."""

    def __post_init__(self) -> None:
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VOLT_")}
        self.env.update({"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                         "VOLT_DATA_DIR": str(self.data_dir), "VOLT_API_KEY": self.api_key,
                         "HOME": str(self.work_dir)})
        self.keys = [self.api_key]

    @staticmethod
    def key_id(key: str) -> str:
        """A key names its id: ``volt_sk_live_<id without key_><secret><checksum>``."""
        return KEY_ID_PREFIX + key.removeprefix("volt_sk_live_")[:ID_CHARS]

    def substitute(self, code: str) -> str:
        """The reader's own values for the README's placeholders: the newest live key
        (and its id) where it shows ``volt_sk_live_...`` (and ``key_…...``)."""
        code = code.replace(DOCUMENTED_BASE, self.base_url)
        code = code.replace("volt_sk_live_...", self.keys[-1])
        return re.sub(r"\bkey_\w*\.\.\.", self.key_id(self.keys[-1]), code)

    def _learn(self, output: str) -> None:
        self.keys += [k for k in re.findall(r"\bvolt_sk_live_\w+", output) if k not in self.keys]
        for revoked in re.findall(r"\bRevoked (key_[A-Za-z0-9]+)", output):
            self.keys = [k for k in self.keys if self.key_id(k) != revoked]

    def run(self, argv: list[str], what: str) -> str:
        result = subprocess.run(argv, env=self.env, cwd=self.work_dir, capture_output=True,
                                text=True, timeout=120, check=False)
        output = result.stdout + result.stderr
        if result.returncode != 0 or "Traceback" in output:
            raise AssertionError(f"README example failed ({what}), status "
                                 f"{result.returncode}:\n{output}")
        self._learn(output)
        return result.stdout

    def shell(self, example: Example) -> list[str]:
        """Each command of a ``sh`` block in turn; ``export`` lines set the
        environment of the commands after them, as in a reader's shell."""
        outputs = []
        commands = example.code.replace("\\\n", " ").splitlines()
        for command in (c.strip() for c in commands):
            if not command or command.startswith("#"):
                continue
            command = self.substitute(command)
            if command.startswith("export "):
                for assignment in shlex.split(command, comments=True)[1:]:
                    name, _, value = assignment.partition("=")
                    self.env[name] = value
                continue
            outputs.append(self.run(["bash", "-c", command], f"README line {example.line}: "
                                                             f"{command}"))
        return outputs

    def python(self, example: Example, prelude: str = "") -> str:
        return self.run([sys.executable, "-c", self.substitute(prelude + example.code)],
                        f"README line {example.line}")
