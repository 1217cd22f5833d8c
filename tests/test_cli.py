import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, timeout=300)


def test_help_explains_every_subcommand():
    top = run("--help")
    assert top.returncode == 0
    for cmd in ("train", "export", "inspect", "demo"):
        assert cmd in top.stdout
        sub = run(cmd, "--help")
        assert sub.returncode == 0 and "--out" in sub.stdout


def test_bad_command_line_exits_2():
    assert run("inspect").returncode == 2
    assert run("frobnicate").returncode == 2


def test_errors_go_to_stderr_with_exit_1(tmp_path):
    p = run("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert p.returncode == 1 and "no such folder" in p.stderr and p.stdout == ""
    p = run("inspect", "--bundle", str(tmp_path), "--source", ".", "--out", str(tmp_path / "o"))
    assert p.returncode == 1 and "manifest.json is missing" in p.stderr
    (tmp_path / "cfg.yaml").write_text("density:\n  bank_sise: 10\n")
    (tmp_path / "imgs").mkdir()
    p = run("train", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "b"), "--config", str(tmp_path / "cfg.yaml"))
    assert p.returncode == 2 and "bank_sise" in p.stderr       # a bad configuration is a bad command line


def test_train_prints_a_json_summary(small_category, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("model: {image_size: 64}\ndensity: {bank_size: 128, max_candidates: 2000, folds: 2}\nthreads: 2\n")
    p = run("train", "--data", str(small_category), "--out", str(tmp_path / "b"), "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["n_images"] == 24 and (tmp_path / "b" / "manifest.json").is_file()
    assert "cross-fitting" in p.stderr                        # progress is shown
    again = run("train", "--data", str(small_category), "--out", str(tmp_path / "b"), "--config", str(cfg))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_a_file_where_a_folder_is_wanted_is_named_for_what_it_is(tmp_path):
    (tmp_path / "part.png").write_bytes(b"x")
    (tmp_path / "b.ckpt").write_bytes(b"x")
    p = run("train", "--data", str(tmp_path / "part.png"), "--out", str(tmp_path / "new"))
    assert p.returncode == 1 and "is a file; --data takes the folder" in p.stderr
    p = run("inspect", "--bundle", str(tmp_path / "b.ckpt"), "--source", ".", "--out", str(tmp_path / "o"))
    assert p.returncode == 1 and "is a training checkpoint" in p.stderr and "linewatch export" in p.stderr


def test_serve_refuses_a_port_out_of_range_and_names_one_in_use(tmp_path, small_bundle):
    import socket

    p = run("serve", "--bundle", str(small_bundle), "--port", "99999")
    assert p.returncode == 2 and "a TCP port is 0..65535" in p.stderr and "Traceback" not in p.stderr
    p = run("inspect", "--bundle", str(small_bundle), "--source", ".", "--out", str(tmp_path / "o"), "--threads", "-1")
    assert p.returncode == 2 and "--threads: must be >= 0" in p.stderr
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = run("serve", "--bundle", str(small_bundle), "--port", str(port))
    assert p.returncode == 1 and f"127.0.0.1:{port} is already in use" in p.stderr and "Errno" not in p.stderr
