"""DVC experiments on the tiny profile, the way the README runs them: the README's experiments block, line by line.

One module-scoped session runs the whole block once on a finished tiny DAG (a copy of the git + DVC project that
the served deployment ran, tests/conftest.py: tiny_deployment): commit the baseline, `dvc exp run -S`, a queued 2-point sweep started with
`dvc queue start`, `dvc exp show`, diffs between experiments, `dvc exp apply`. The tests read what each line printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from project_copy import ROOT, run as _run  # tests/project_copy.py

pytestmark = pytest.mark.integration

README_MARK = "tests/integration/test_dvc_experiments.py runs exactly these lines"
STAGES = ["prepare_data", "extract_features", "base_vl", "stage_a", "stage_b", "stage_c", "evaluate", "promote"]
HEADLINE = ["passed", "retention_drop", "audio_gain", "skip_rate", "irrelevant_flip_rate", "forced_flip_rate"]
QUEUE_TIMEOUT_S = 1800
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def readme_example() -> list[str]:
    """The README's experiments block: its command lines, trailing comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(README_MARK):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def _terminal(cmd: list[str], cwd: Path, env: dict, columns: int) -> str:
    """What `cmd` shows in a `columns`-wide terminal: run on a pseudo-terminal (so DVC pages the table as it does for
    a user, through `less -S`), each line cut at `columns` as less shows its first screen."""
    leader, follower = os.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "COLUMNS": str(columns), "DVC_PAGER": "cat"},
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    text = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "")
    return "\n".join(line[:columns] for line in text.splitlines())


def _experiments(dst: Path, env: dict) -> dict[str, dict]:
    """{experiment name: its `dvc exp show --json` data (params, metrics)} for the baseline commit's experiments."""
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], dst, env).stdout)
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            found[rev["name"]] = rev["data"]
    return found


def _headline(data: dict) -> dict:
    return data["metrics"]["data/eval/headline.json"]["data"]


def _alpha(data: dict) -> float:
    return data["params"]["params.yaml"]["data"]["stage_b"]["alpha"]


def _best(experiments: dict[str, dict], names: list[str]) -> str:
    """Passing first, then the largest audio gain, then the smallest flip rate (what a reader of exp show picks)."""
    return max(names, key=lambda n: (_headline(experiments[n])["passed"], _headline(experiments[n])["audio_gain"],
                                     -_headline(experiments[n])["irrelevant_flip_rate"]))


def _wait_for_queue(dst: Path, env: dict) -> str:
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = _run(["dvc", "queue", "status"], dst, env).stdout
        if not re.search(r"\b(Queued|Running)\b", status) and "0 active" in status:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")
        time.sleep(10)


@pytest.fixture(scope="module")
def project(tiny_deployment, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the finished tiny project (outputs, DVC cache, git history, MLflow store): the experiments commit and
    apply in it without changing the project the other integration tests read."""
    dst = tmp_path_factory.mktemp("experiments") / "repo"
    shutil.copytree(tiny_deployment.project, dst, symlinks=True)
    env = {**tiny_deployment.env, "PYTHONPATH": str(dst)}
    _run(["git", "checkout", "--", "params.yaml"], dst, env)  # test_dag's last test set num_processes: 2 there
    return dst, env


@pytest.fixture(scope="module")
def session(project) -> dict:
    """Runs the tiny DAG, then every line of the README's experiments block; returns what each printed."""
    dst, env = project
    started = time.monotonic()
    _run(["dvc", "repro"], dst, env)
    out: dict = {"dst": dst, "env": env, "dag_s": time.monotonic() - started}
    names: dict[str, str] = {}
    try:
        for line in readme_example():
            if "<" in line and not names:  # the sweep is done: name its experiments (exp show lists them until
                experiments = _experiments(dst, env)  # the final commit moves HEAD to a new baseline)
                queued = sorted(out["queued"], key=lambda n: _alpha(experiments[n]))
                names = {"<exp-a>": queued[0], "<exp-b>": queued[1], "<best>": _best(experiments, queued)}
                out["names"], out["experiments"] = names, experiments
            command = line
            for placeholder, name in names.items():
                command = command.replace(placeholder, name)
            argv = ["bash", "-c", command]  # as typed in a shell (`&&`, quotes)
            if command == "dvc queue start":  # its worker outlives it: no pipe to wait on
                subprocess.run(argv, cwd=dst, env=env, check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=120)
                out[line] = ""
            elif command == "dvc queue status":
                out[line] = _wait_for_queue(dst, env)
            elif command == "dvc exp show":
                out[line] = _terminal(argv, dst, env, columns=160)
            else:
                result = _run(argv, dst, env)
                out[line] = result.stdout + result.stderr
            out[command] = out[line]  # by README line and by the command run (placeholders filled in)
            if command.startswith("dvc exp run --queue"):
                out["queued"] = re.findall(r"Queued experiment '([^']+)'", out[line])
            out.setdefault("after", {})[line] = time.monotonic() - started
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=dst, env=env, capture_output=True, timeout=120)
    out["total_s"] = time.monotonic() - started
    print(f"\ntiny DAG {out['dag_s']:.0f} s, README experiments block {out['total_s'] - out['dag_s']:.0f} s")
    return out


def _line(prefix: str) -> str:
    matches = [line for line in readme_example() if line.startswith(prefix)]
    assert len(matches) == 1, f"the README's experiments block has {len(matches)} lines starting {prefix!r}"
    return matches[0]


def test_one_experiment_reruns_only_stage_b_and_what_follows(session):
    printed = session[_line("dvc exp run -S stage_b.alpha=0.2")]
    skipped = re.findall(r"Stage '(\w+)' didn't change, skipping", printed)
    ran = re.findall(r"Running stage '(\w+)'", printed)
    assert skipped == STAGES[:4] and ran == STAGES[4:], printed[-3000:]


def test_metrics_diff_compares_with_the_committed_result(session):
    assert "dvc metrics diff" in readme_example()
    printed = session["dvc metrics diff"]
    assert "failed to load" not in printed, printed
    assert re.search(r"Path\s+Metric\s+HEAD\s+workspace\s+Change", printed), printed


def test_each_experiment_is_in_exp_show_with_its_params_and_headline(session):
    experiments = session["experiments"]
    alphas = {name: _alpha(data) for name, data in experiments.items()}
    assert sorted(alphas.values()) == [0.05, 0.1, 0.2], alphas
    for name, data in experiments.items():
        assert list(_headline(data))[:len(HEADLINE)] == HEADLINE, name
        assert isinstance(_headline(data)["passed"], bool)


def test_the_sweep_ran_in_the_queue_and_reran_from_stage_b(session):
    assert len(session["queued"]) == 2
    status = session[_line("dvc queue status")]
    for name in session["queued"]:
        assert re.search(rf"{name}\s+.*Success", status), status
        logs = _run(["dvc", "queue", "logs", name], session["dst"], session["env"]).stdout
        assert re.findall(r"Running stage '(\w+)'", logs) == STAGES[4:], logs[-3000:]


def test_exp_show_in_a_160_column_terminal_shows_the_verdict_and_criteria(session):
    table = session[_line("dvc exp show")]
    header = next(line for line in table.splitlines() if "Experiment" in line)
    assert header.split()[:2] == ["Experiment", "Created"]
    for column in HEADLINE:
        assert column in header.split(), header
    for name in [*session["queued"], "workspace"]:
        row = next((line for line in table.splitlines() if name in line), None)
        assert row is not None and re.search(r"\b(True|False)\b", row), table


def test_metrics_and_plots_diff_between_two_experiments(session):
    a, b = session["names"]["<exp-a>"], session["names"]["<exp-b>"]
    diff = session[f"dvc metrics diff {a} {b}"]
    assert "failed to load" not in diff and re.search(rf"Metric\s+{a}\s+{b}\s+Change", diff), diff
    plots = session[f"dvc plots diff {a} {b}"]
    assert "WARNING" not in plots and "ERROR" not in plots, plots
    html = (session["dst"] / "dvc_plots" / "index.html").read_text()
    assert "stage_b_rewards" in html and a in html and b in html


def test_the_applied_experiment_is_committed_and_up_to_date(session):
    dst, env, best = session["dst"], session["env"], session["names"]["<best>"]
    experiments = session["experiments"]
    params = yaml.safe_load((dst / "params.yaml").read_text())
    assert params["stage_b"]["alpha"] == _alpha(experiments[best])
    assert json.loads((dst / "data/eval/headline.json").read_text()) == _headline(experiments[best])
    assert "up to date" in _run(["dvc", "status"], dst, env).stdout
    assert _run(["git", "status", "--porcelain", "--untracked-files=no"], dst, env).stdout.strip() == ""
    assert best in _run(["git", "log", "-1", "--format=%s"], dst, env).stdout


def test_mlflow_runs_and_versions_name_their_experiment(session):
    from safe import tracking

    dst = session["dst"]
    mlf = tracking.client(dst)
    expected = {name: f"stage_b.alpha={_alpha(data)}" for name, data in session["experiments"].items()}
    parents = mlf.search_runs([tracking.experiment_id(mlf)], filter_string="tags.`safe.role` = 'pipeline'")
    by_name = {r.data.tags.get(tracking.EXP_NAME_TAG): r for r in parents if tracking.EXP_NAME_TAG in r.data.tags}
    assert set(by_name) == set(expected)
    for name, run in by_name.items():
        assert run.info.run_name == f"exp {name}"
        # 0.1 is the baseline's own value: that experiment changed nothing
        assert run.data.tags[tracking.EXP_PARAMS_TAG] == ("none" if expected[name].endswith("=0.1") else expected[name])
        stages = [r.info.run_name for r in tracking.stage_runs(run.info.run_id, mlf)]
        assert stages == STAGES[4:], (name, stages)
    versions = mlf.search_model_versions("name = 'safe-audio-vl'")
    from_exps = {v.tags.get(tracking.EXP_NAME_TAG): v for v in versions if tracking.EXP_NAME_TAG in v.tags}
    assert set(from_exps) == set(expected)
    for name, version in from_exps.items():
        assert f"DVC experiment {name}" in version.description
