"""``benchmarks/run_all.py`` (``make benchmarks``) re-runs every benchmark whose results the README and the issues
quote: a new benchmark script that it does not run (or name as not run) fails here."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks"


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_is_run_or_named_as_not_run(tmp_path):
    run_all = _run_all()
    source = (BENCH / "run_all.py").read_text()
    scripts = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "run_all" and not p.stem.startswith("_"))
    missing = [s for s in scripts if f'"{s}.py"' not in source and s not in run_all.NOT_RUN]
    assert not missing, f"benchmarks not in run_all.py: {missing}"
    assert all((BENCH / f"{s}.py").is_file() for s in run_all.NOT_RUN)
    steps = run_all.plan(tmp_path / "data", tmp_path / "out", quick=True)
    doc_names = {line.split()[0] for line in run_all.__doc__.splitlines()
                 if line and not line.startswith(("=", " ")) and len(line.split()) > 1 and line.split()[0] in steps}
    assert doc_names == set(steps), f"steps missing from the docstring table: {set(steps) - doc_names}"


def test_real_scan_benchmarks_are_skipped_without_their_data(tmp_path, capsys):
    run_all = _run_all()
    steps = run_all.plan(tmp_path / "data", tmp_path / "out", quick=True)
    assert steps["real_scans"]() is None and steps["real_scan_twin"]() is None
    with_data = run_all.plan(tmp_path / "data", tmp_path / "out", quick=True, real_data=tmp_path / "real")
    assert str(tmp_path / "real") in with_data["real_scans"]()
    assert run_all.main(["--only", "real_scans,real_scan_twin", "--quick", "--data", str(tmp_path / "data"),
                         "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.count("skipped (needs --real-data DIR") == 2


def test_every_result_names_its_machine(tmp_path, capsys):
    """``benchmarks/_common.py``: what each benchmark writes beside its numbers (timings differ between CPUs of the
    same core count, so the CPU model must be there), and the one-line form of the Markdown headers."""
    spec = importlib.util.spec_from_file_location("_common", BENCH / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    info = common.machine_info(simpleitk="2.x")
    assert {"date", "cpu", "cpu_count", "platform", "python", "gpu"} <= set(info) and info["simpleitk"] == "2.x"
    assert info["cpu"] and info["date"].endswith(" UTC") and info["cpu_count"] >= 1
    line = common.machine_line(info)
    assert line.startswith(info["cpu"]) and f"{info['cpu_count']} cores" in line
    assert ("no GPU" in line) == (info["gpu"] is None)
    assert "GPU A100" in common.machine_line({**info, "gpu": "A100"})
    import numpy as np

    common.write_results(tmp_path / "new", "bench", {"machine": info, "c": np.float64(0.5)}, ["# Title", "", "| a |"])
    assert json.loads((tmp_path / "new" / "bench.json").read_text())["c"] == 0.5  # numpy scalars written as numbers
    assert (tmp_path / "new" / "bench.md").read_text() == "# Title\n\n| a |\n"
    assert capsys.readouterr().out == "# Title\n\n| a |\n"
    scripts = [p for p in BENCH.glob("*.py") if p.stem not in ("run_all", "_common")]
    inline = [p.name for p in scripts if "platform.platform()" in p.read_text()]
    assert not inline, f"these benchmarks describe their machine themselves instead of _common.machine_info: {inline}"
