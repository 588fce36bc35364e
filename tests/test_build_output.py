"""``build-runtime --output``: a directory that is not a previous build's output is refused before anything
runs (no resolve, no install, no network), and a user's own requirements.lock is never replaced."""
from __future__ import annotations

import json

import pytest

import runtime_builder
from runtime_builder import pipeline, resolve
from wrenpack.cli import main
from wrenpack.errors import BuildError

HASHED_LOCK = ("cloudpickle==3.1.1 \\\n    --hash=sha256:" + "a" * 64 + "\n"
               "six==1.17.0 \\\n    --hash=sha256:" + "b" * 64 + "\n    # via -r requirements.in\n")
MANIFEST = {"manifest_version": 1, "content_hash": "0" * 64, "target": {"python": "3.11", "arch": "x86_64"},
            "packages": [{"name": "six", "version": "1.17.0"}]}
REPORT = {"ok": False, "stage": "install", "error": "BuildError", "message": "no wheel"}


@pytest.fixture
def no_resolve(monkeypatch, tmp_path):
    """Fail the test if resolution (the first step that needs the package index) starts."""
    def refuse(*a, **k):
        raise AssertionError("resolution started")

    monkeypatch.setattr(resolve, "compile_lock", refuse)
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


def test_a_project_folder_with_its_own_lock_is_refused_in_one_line_before_anything_runs(no_resolve, capsys):
    # `build-runtime -o proj six` replaced the project's pip-compile lock (flask==3.0.0) with the build's, and
    # added python/, layer.zip and manifest.json beside the user's files, with exit 0
    proj = no_resolve / "proj"
    proj.mkdir()
    (proj / "requirements.lock").write_text("flask==3.0.0\n    # my project lock, compiled by pip-compile\n")
    (proj / "NOTES.txt").write_text("my notes\n")
    assert main(["build-runtime", "-o", str(proj), "six"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NOTES.txt that no wrenpack build wrote" in err and "fix: pass a new or empty --output" in err, err
    assert _files(proj) == ["NOTES.txt", "requirements.lock"]
    assert (proj / "requirements.lock").read_text().startswith("flask==3.0.0")


@pytest.mark.parametrize("lock", ["flask==3.0.0\n", "six==1.17.0 \\\n    --hash=sha256:" + "b" * 64 + "\n"])
def test_a_lone_lock_no_build_wrote_is_refused(lock, no_resolve):
    # a user's own lock (not hashed, or hashed but without the cloudpickle pin every build's lock has)
    out = no_resolve / "out"
    out.mkdir()
    (out / "requirements.lock").write_text(lock)
    with pytest.raises(BuildError, match=r"holds a requirements\.lock that no wrenpack build wrote.*fix:") as info:
        runtime_builder.build(["six"], output=str(out))
    assert "\n" not in str(info.value)
    assert _files(out) == ["requirements.lock"] and (out / "requirements.lock").read_text() == lock


def test_a_system_folder_is_refused_and_nothing_is_written_there(no_resolve):
    # `build-runtime --output /etc six` wrote python/, layer.zip, manifest.json and requirements.lock into /etc
    etc = no_resolve / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (etc / "hosts.d").mkdir()
    with pytest.raises(BuildError, match=r"--output .*etc holds hosts\.d, passwd that no wrenpack build wrote"):
        runtime_builder.build(["six"], output=str(etc))
    assert _files(etc) == ["hosts.d", "passwd"]


def test_a_builds_output_with_a_file_of_the_users_beside_it_is_refused(no_resolve):
    out = no_resolve / "rt"
    (out / "python").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(MANIFEST))
    (out / "requirements.lock").write_text(HASHED_LOCK)
    (out / "mine.py").write_text("x = 1\n")
    with pytest.raises(BuildError, match=r"holds mine\.py that no wrenpack build wrote"):
        runtime_builder.build(["six"], output=str(out))


@pytest.mark.parametrize("manifest", ['{"mine": 1}', '{"manifest_version": 1, "content_hash": "abc"}', "not json"])
def test_a_manifest_no_build_wrote_is_refused(manifest, no_resolve):
    out = no_resolve / "rt"
    (out / "python").mkdir(parents=True)
    (out / "manifest.json").write_text(manifest)
    with pytest.raises(BuildError, match=r"holds manifest\.json, python/ that no wrenpack build wrote"):
        runtime_builder.build(["six"], output=str(out))
    assert (out / "manifest.json").read_text() == manifest


def test_what_a_build_wrote_is_taken_as_its_output(tmp_path):
    # a finished build
    out = tmp_path / "rt"
    (out / "python").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(MANIFEST))
    (out / "layer.zip").write_bytes(b"PK")
    (out / "requirements.lock").write_text("anything: the manifest says a build wrote it\n")
    pipeline._check_output(str(out))
    # a failed build: its lock and report
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "requirements.lock").write_text("flask==3.0.0\n")
    (failed / "build-report.json").write_text(json.dumps(REPORT))
    pipeline._check_output(str(failed))
    # a build's lock, committed (the rest ignored by git): it seeds the build
    committed = tmp_path / "committed"
    committed.mkdir()
    (committed / "requirements.lock").write_text(HASHED_LOCK)
    pipeline._check_output(str(committed))
    # a --lock build's output lock is the --lock itself
    (tmp_path / "mine.lock").write_text("flask==3.0.0 --hash=sha256:" + "c" * 64 + "\n")
    (tmp_path / "bylock").mkdir()
    (tmp_path / "bylock" / "requirements.lock").write_text((tmp_path / "mine.lock").read_text())
    pipeline._check_output(str(tmp_path / "bylock"), str(tmp_path / "mine.lock"))
    # new or empty
    pipeline._check_output(str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    pipeline._check_output(str(tmp_path / "empty"))


def test_a_report_no_build_wrote_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "build-report.json").write_text('{"mine": 1}')
    with pytest.raises(BuildError, match=r"holds a build-report\.json that no wrenpack build wrote"):
        pipeline._check_output(str(out))


def test_docker_builds_check_the_output_too(no_resolve, monkeypatch):
    from runtime_builder import docker_build

    def no_docker():
        raise AssertionError("docker was asked")

    monkeypatch.setattr(docker_build, "docker_client", no_docker)
    proj = no_resolve / "proj"
    proj.mkdir()
    (proj / "requirements.lock").write_text("flask==3.0.0\n")
    with pytest.raises(BuildError, match=r"holds a requirements\.lock that no wrenpack build wrote"):
        docker_build.build_image(["six"], output=str(proj))
    assert (proj / "requirements.lock").read_text() == "flask==3.0.0\n"
