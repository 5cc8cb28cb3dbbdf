"""Every command of the README, run as written (the install and test commands are CI's own)."""
import os
import re
import subprocess
import sys
import time

import torch

from conftest import ROOT

README = (ROOT / "README.md").read_text()
COMMANDS = [m.group(1).strip() for m in re.finditer(r"^\s*(?:\$ )?(python run\.py [^#\n]*)", README, re.M)]
MAIN = "python run.py --experiment fixed-init --batch-models 16"


def run(command, cwd, data_dir):
    args = command.split()[2:]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, FASTVAR_DATA=str(data_dir)), timeout=600)


def test_the_main_command_starts_the_seed_study_and_says_so(real_data_dir, tmp_path):
    assert MAIN in COMMANDS
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *MAIN.split()[2:]], cwd=tmp_path, text=True,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               env=dict(os.environ, FASTVAR_DATA=str(real_data_dir)))
    deadline, seen = time.time() + 300, []
    try:
        while time.time() < deadline:
            line = process.stderr.readline()
            seen.append(line)
            if line.startswith("fastvar: training") or not line:
                break
    finally:
        process.kill()
        process.wait()
    assert seen[-1].startswith("fastvar: training 1000 of 1000 runs of fixed-init into results/fixed-init"), seen
    assert "the seed recipe, resnet18 at width 64, 10 epochs of 50,000 examples" in seen[-1]
    how = "M = 16" if torch.cuda.is_available() else "loop strategy (one run at a time, each stored as it finishes)"
    assert how in seen[-1]


def test_the_cpu_sized_study_then_analyze_and_compare_run_as_written(real_data_dir, tmp_path):
    small = next(c for c in COMMANDS if "--runs 8" in c)
    for command in (small, small.replace("fixed-init", "all-random")):  # "the same for all-random"
        result = run(command, tmp_path, real_data_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1].startswith("8 runs in results/") and "-cpu" in result.stdout
    for command in COMMANDS:
        if command in (MAIN, small):
            continue
        result = run(command, tmp_path, real_data_dir)
        assert result.returncode == 0, (command, result.stderr)
    assert "B - A:" in run("python run.py compare results/all-random-cpu results/fixed-init-cpu", tmp_path,
                           real_data_dir).stdout
    assert (tmp_path / "results" / "fixed-init-cpu" / "report.md").is_file()
    assert not (tmp_path / "results" / "fixed-init").exists()  # the main command's folder is left to it
