"""The README's snippets run as written and its sample output is what the commands print.

Why: a new user copies the README first. Its Python blocks run here in a fresh folder
(with ``examples/`` and ``topologies/`` linked in, and ``llama70b.onnx`` made by the
README's own ``shardc synth`` line), and the figures of its ``shardc inspect`` sample are
checked against the real output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from shardc.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def _commands() -> list[str]:
    """Every ``$ shardc ...`` command of the shell blocks, continuation lines joined."""
    out = []
    for block in _blocks("sh"):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            if line.startswith("$ shardc "):
                out.append(line[2:].split("#")[0].strip())
    return out


def test_python_snippets_run_as_written(tmp_path: Path) -> None:
    for name in ("examples", "topologies"):
        (tmp_path / name).symlink_to(ROOT / name)
    synth = [c for c in _commands() if c.startswith("shardc synth") and "llama70b.onnx" in c]
    assert synth, "the README no longer makes llama70b.onnx"
    args = synth[-1].split()[1:]  # the last one: symbolic batch and seq, as a user would have
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        os.chdir(ROOT)
    assert result.exit_code == 0, result.output
    blocks = _blocks("python")
    assert len(blocks) >= 2
    for i, code in enumerate(blocks):
        script = tmp_path / f"snippet{i}.py"
        script.write_text("import shardc\n" + code)
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"README python block {i}:\n{code}\n{done.stderr[-3000:]}"


def test_inspect_sample_matches_the_command() -> None:
    block = next(b for b in _blocks("sh") if "$ shardc inspect examples/models/tiny_gpt2" in b)
    lines = block.split("$ shardc inspect examples/models/tiny_gpt2.onnx\n", 1)[1].splitlines()
    sample = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith(("…", "$")):
            break
        key, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        sample.append((key, value))
    assert len(sample) >= 4
    out = CliRunner().invoke(cli, ["inspect", str(ROOT / "examples/models/tiny_gpt2.onnx")])
    assert out.exit_code == 0, out.output
    rows = {}
    for line in out.output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    for key, value in sample:
        assert rows.get(key) == value, f"README says {key}: {value}, inspect says {rows.get(key)}"
