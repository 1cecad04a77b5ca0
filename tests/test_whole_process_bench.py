"""bench/whole_process.py: whole `zsw reconstruct` processes, one per arm and round."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from zsw.bench import whole_process


def test_each_arm_runs_its_own_options_and_the_table_says_which(tmp_path, monkeypatch):
    """A process per arm and round (faked here: it writes the result.json zsw reconstruct would),
    ``--background`` passed only when an arm names it, and the table and medians say what ran."""
    calls = []

    def fake_run(cmd, check, capture_output):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-o") + 1]) / "photo"
        out.mkdir(parents=True, exist_ok=True)
        background = cmd[cmd.index("--background") + 1] if "--background" in cmd else "auto"
        mask = "predicted" if background == "never" else "predicted, refined by the photo's colours"
        record = {"model": {"backend": "onnxruntime+torch", "tta": "flip-pixel"}, "mesh": {"smooth": 30},
                  "request": {"background": background}, "mask": mask, "timings_s": {"pixel": 0.1},
                  "grid": {"evaluated_points": 10, "grid_points": 100}}  # fmt: skip
        (out / "result.json").write_text(json.dumps(record))

    monkeypatch.setattr(whole_process.subprocess, "run", fake_run)
    md = tmp_path / "t.md"
    whole_process.main(["photo.jpg", "--backend", "auto", "--background", "auto", "--background", "never",
                        "--rounds", "2", "--out", str(md)])  # fmt: skip
    assert len(calls) == 4 and all(c[:3] == [sys.executable, "-m", "zsw"] and c[-1] == "--overwrite" for c in calls)
    assert [c[c.index("--background") + 1] for c in calls] == ["auto", "never", "auto", "never"]
    text = md.read_text()
    assert "| 1 | auto | auto | 30 | never | onnxruntime+torch, flip-pixel |" in text
    assert "--background never` (onnxruntime+torch, flip-pixel, mask predicted)" in text
    assert "--background" not in whole_process.command("p.jpg", "auto", tmp_path, [])
