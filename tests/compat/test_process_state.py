"""``import gendistill`` changes nothing in the process; ``prepare_process`` is the opt-in setup the CLI runs."""

import json
import subprocess
import sys

REPORT = "import json, os, sys; print(json.dumps({'env': dict(os.environ), 'torch': 'torch' in sys.modules}))"


def _run(code: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-800:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}


def test_import_gendistill_leaves_the_environment_and_torch_alone():
    env = _clean_env()
    before = _run(REPORT, env)
    after = _run("import gendistill, gendistill.compat, gendistill.shipped; " + REPORT, env)
    assert after["env"] == before["env"] and "OMP_WAIT_POLICY" not in after["env"]
    assert after["torch"] is False  # importing the package loads no torch (and so registers no torch ops)


def test_prepare_process_sets_a_default_the_user_can_override():
    code = "from gendistill.compat import prepare_process; prepare_process(); prepare_process(); " + REPORT
    assert _run(code, _clean_env())["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert _run(code, {**_clean_env(), "OMP_WAIT_POLICY": "ACTIVE"})["env"]["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_command_line_module_imports_without_torch():
    """cli.py must not pull torch in before main() has prepared the process."""
    result = _run("import gendistill.cli; " + REPORT, _clean_env())
    assert result["torch"] is False and "OMP_WAIT_POLICY" not in result["env"]
