"""docs/server.md's table of flags is what nppd says of itself (the option
table drives parsing, the environment, --help and this)."""
import os
import subprocess

from conftest import NPPD

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "server.md")


def test_docs_list_every_flag_as_nppd_does():
    table = subprocess.run([NPPD, "--help-markdown"], capture_output=True, text=True,
                           check=True).stdout
    assert table.count("\n") > 20 and table.startswith("| flag | variable | default | what |")
    assert table in open(DOC).read(), "docs/server.md's flag table differs from nppd --help-markdown"
    helptext = subprocess.run([NPPD, "--help"], capture_output=True, text=True, check=True).stdout
    for line in table.splitlines()[2:]:
        flag = line.split("`")[1].split(" ")[0]
        env = line.split("`")[3]
        assert flag in helptext and env in helptext, (flag, env)
