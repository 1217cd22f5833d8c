"""The layering rules: runtime imports nothing of ours and never torch; training never imports export."""
import ast
import sys
from pathlib import Path

from conftest import run_without_torch

ROOT = Path(__file__).resolve().parents[1]


def imports_of(folder: str) -> dict[str, set[str]]:
    """Module names imported by each .py file of ``folder`` (relative imports resolved to linewatch.*)."""
    package = {"runtime": "linewatch.runtime", "training": "linewatch.training", "export": "linewatch.export",
               "jobs": "linewatch.jobs"}[folder]
    found = {}
    for path in (ROOT / folder).rglob("*.py"):
        parts = package.split(".") + list(path.relative_to(ROOT / folder).with_suffix("").parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[: len(parts) - node.level]
                    names.add(".".join(base + ([node.module] if node.module else [])))
                else:
                    names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_runtime_imports_only_itself_numpy_opencv_onnxruntime_and_stdlib():
    allowed_third_party = {"numpy", "cv2", "onnxruntime"}
    for file, names in imports_of("runtime").items():
        for name in names:
            top = name.split(".")[0]
            if top == "linewatch":
                assert name.startswith("linewatch.runtime"), f"{file} imports {name}"
            else:
                assert top in allowed_third_party or top in sys.stdlib_module_names, f"{file} imports {name}"


def test_training_never_imports_export_or_jobs():
    for file, names in imports_of("training").items():
        assert not any(n.startswith(("linewatch.export", "linewatch.jobs")) for n in names), file
    for file, names in imports_of("export").items():
        assert not any(n.startswith("linewatch.jobs") for n in names), file


def test_scoring_and_the_inspect_command_run_with_torch_unimportable(small_bundle, small_category, tmp_path):
    """Run a real inspection in a fresh interpreter in which importing torch (or onnx) raises."""
    result = run_without_torch(f"""
        from linewatch.cli import main
        rc = main(["inspect", "--bundle", {str(small_bundle)!r}, "--source", {str(small_category / "test")!r},
                   "--out", {str(tmp_path / "out")!r}])
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "linewatch") and
               m.startswith(("torch", "onnx", "linewatch.training", "linewatch.export", "linewatch.jobs"))]
        print(json.dumps({{"rc": rc, "bad": bad}}))
    """)
    assert result == {"rc": 0, "bad": []}
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(list((small_category / "test").rglob("*.png")))
