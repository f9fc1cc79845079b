"""Faults a user meets: damaged model files, prompts files made on other systems, a disk that fills up mid-run.
Each ends in one line `entrgi.py: error: ...`, never a traceback."""

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import entrgi

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = ["--samples", "2", "--steps", "4", "--max-new-tokens", "6", "--device", "cpu"]


def main(*args, dream_dir, rm_dir):
    entrgi.main(["--dllm", dream_dir, "--reward-model", rm_dir, *SMALL, *args])


def one_error_line(capsys, exit_info, status=2):
    err = capsys.readouterr().err
    assert exit_info.value.code == status and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("entrgi.py: error: ")
    return last


def damaged(src, tmp_path, file, change):
    """A copy of the model folder `src` with `file` changed by change(path)."""
    path = tmp_path / f"{os.path.basename(src)}-{file}"
    shutil.copytree(src, path)
    change(path / file)
    return str(path)


def cut(fraction):
    return lambda f: f.write_bytes(f.read_bytes()[: int(f.stat().st_size * fraction)])


def garble_header(f):
    data = bytearray(f.read_bytes())
    data[10:20] = b"\x00{;:'\"garb"                               # inside the JSON header
    f.write_bytes(bytes(data))


CASES = [   # (which model, file, change, what the one line says)
    ("dllm", "model.safetensors", cut(0.5), "model.safetensors is damaged (cut short: "),
    ("dllm", "model.safetensors", cut(0.0005), "model.safetensors is damaged (cut short: "),
    ("dllm", "model.safetensors", garble_header, "model.safetensors is damaged (its header is not JSON: "),
    ("dllm", "config.json", lambda f: f.write_text('{"model_type": "Dream",, }'),
     "config.json is damaged (Expecting property name enclosed in double quotes: line 1 column 24 (char 23))"),
    ("dllm", "config.json", lambda f: f.write_text("[1, 2]"), "holds no config.json with a JSON object in it"),
    ("dllm", "config.json", lambda f: f.unlink(), "holds no config.json"),
    ("dllm", "vocab.json", cut(0.5), "vocab.json is damaged (Unterminated string"),
    ("dllm", "tokenizer_config.json", cut(0.7), "tokenizer_config.json is damaged ("),
    ("dllm", "merges.txt", lambda f: f.write_text("#version: 0.2\nthis line has three\n"),
     "cannot load the tokenizer of "),
    ("rm", "model.safetensors", cut(0.9), "model.safetensors is damaged (cut short: "),
    ("rm", "tokenizer.json", cut(0.5), "tokenizer.json is damaged ("),
    ("rm", "config.json", lambda f: f.write_bytes(b"\xff\xfe{}"), "config.json is damaged ("),
]


@pytest.mark.parametrize("which, file, change, message", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_damaged_model_files_exit_2_naming_the_file(which, file, change, message, dream_dir, rm_dir, tmp_path,
                                                    capsys, monkeypatch):
    monkeypatch.setattr(entrgi, "generate", lambda *a, **k: pytest.fail("generated"))
    broken = damaged(dream_dir if which == "dllm" else rm_dir, tmp_path, file, change)
    dirs = dict(dream_dir=broken, rm_dir=rm_dir) if which == "dllm" else dict(dream_dir=dream_dir, rm_dir=broken)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", **dirs)
    last = one_error_line(capsys, exit_info)
    assert message in last and repr(broken) in last and "offline" not in last, last


def test_offline_is_said_of_hub_names_only(dream_dir, rm_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", dream_dir="no-such-org/no-such-dllm", rm_dir=rm_dir)
    assert "check the name, or the machine may be offline" in one_error_line(capsys, exit_info)

# -----------------------------------------------------------------------------
# prompts files from other systems


def test_byte_order_mark_and_crlf_are_no_part_of_a_prompt(tmp_path):
    jsonl, text = tmp_path / "p.jsonl", tmp_path / "p.txt"
    jsonl.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "Hello", "id": 1}\r\n{"prompt": "Why?\\u2028no", "id": 2}\r\n')
    text.write_bytes(b"\xef\xbb\xbfHello\r\n\r\nWhy?\r\n")
    assert entrgi.read_prompts(str(jsonl)) == [{"prompt": "Hello", "id": 1}, {"prompt": "Why?\u2028no", "id": 2}]
    assert entrgi.read_prompts(str(text)) == [{"prompt": "Hello"}, {"prompt": "Why?"}]


def test_a_jsonl_file_with_a_byte_order_mark_runs(tmp_path, dream_dir, rm_dir):
    src = tmp_path / "p.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "Hello"}).encode() + b"\r\n")
    out = tmp_path / "o.jsonl"
    main("--prompts-file", str(src), "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    assert json.loads(out.read_text().splitlines()[0])["prompt"] == "Hello"

# -----------------------------------------------------------------------------
# a disk that fills up


def full_disk(monkeypatch, room, partial):
    """entrgi's appends and page writes go to a disk with `room` bytes left: a write that does not fit raises
    ENOSPC having written nothing or, with partial, writes what fits and returns the count (as write(2) may)."""
    left, real_open = [room], open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            n = min(len(data), left[0])
            if n == 0 or (n < len(data) and not partial):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= n
            return self.f.write(data[:n])

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if mode in ("ab", "w") else f
    monkeypatch.setattr(entrgi, "open", fake_open, raising=False)


@pytest.mark.parametrize("partial", [False, True])
def test_a_full_disk_ends_the_run_in_one_line_and_the_same_command_completes_it(partial, tmp_path, dream_dir, rm_dir,
                                                                                capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\nWrite a poem\nWhy?\nOne two three\n")
    whole, out = tmp_path / "whole.jsonl", tmp_path / "o.jsonl"
    args = ("--prompts-file", str(prompts), "--output", str(out))
    main("--prompts-file", str(prompts), "--output", str(whole), dream_dir=dream_dir, rm_dir=rm_dir)
    expected = whole.read_text().splitlines()[:4]
    room = len("\n".join(expected[:2]).encode()) + 1 + len(expected[2]) // 2      # two lines and half the third
    full_disk(monkeypatch, room, partial)
    with pytest.raises(SystemExit) as exit_info:
        main(*args, dream_dir=dream_dir, rm_dir=rm_dir)
    last = one_error_line(capsys, exit_info, status=74)
    reason = "only " if partial else "No space left on device"
    assert last.startswith(f"entrgi.py: error: cannot write --output {str(out)!r}: {reason}"), last
    assert out.read_text() == "\n".join(expected[:2]) + "\n"                     # whole lines, the half line taken back
    monkeypatch.undo()                                                           # room again
    main(*args, dream_dir=dream_dir, rm_dir=rm_dir)
    assert out.read_text().splitlines()[:4] == expected


def test_a_full_disk_leaves_no_trace_page(tmp_path, dream_dir, rm_dir, capsys, monkeypatch):
    page = tmp_path / "t.html"
    full_disk(monkeypatch, 100, partial=False)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--trace", str(page), dream_dir=dream_dir, rm_dir=rm_dir)
    assert f"cannot write --trace {str(page)!r}: " in one_error_line(capsys, exit_info, status=74)
    assert os.listdir(tmp_path) == []


# -----------------------------------------------------------------------------
# a third round: text, fields, pipes, two runs at once, unwritable outputs, resumes, NaN, out of memory


def refused_before_any_model(monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(entrgi, "load_dllm", no_model)


def test_prompt_bytes_that_are_not_utf8_exit_2(dream_dir, rm_dir, tmp_path):
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream_dir, "--reward-model", rm_dir, *SMALL,
           "--prompt", os.fsdecode(b"caf\xe9 au lait")]                # Latin-1 bytes, as a shell passes them
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--prompt: the prompt is not valid UTF-8 text" in p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "\\ud83d tail"}', "the prompt is not valid UTF-8 text ('\\ud83d' at character 0)"),
    ('{"prompt": [{"role": "user", "content": "Hi"}]}', '"prompt" field is list, not text'),
    ('{"prompt": 42}', '"prompt" field is int, not text'),
    ('{"prompt": "Hi", "method": "mine"}', 'has a field "method", a name entrgi.py writes'),
    ('{"prompt": "Hi", "settings": {}}', 'has a field "settings", a name entrgi.py writes'),
])
def test_jsonl_prompts_that_are_not_text_or_clash_with_our_fields_exit_2(line, message, dream_dir, rm_dir, tmp_path,
                                                                         capsys, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n' + line + "\n", encoding="utf-8")
    refused_before_any_model(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompts-file", str(prompts), "--output", str(tmp_path / "o.jsonl"), dream_dir=dream_dir, rm_dir=rm_dir)
    last = one_error_line(capsys, exit_info)
    assert "line 2" in last and message in last


def test_output_to_standard_output_does_not_hang(dream_dir, rm_dir):
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream_dir, "--reward-model", rm_dir, *SMALL,
           "--prompt", "Hello", "--output", "/dev/stdout"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert [list(r)[-1] if "summary" in r else r["method"] for r in records] == ["entrgi", "summary"]


def test_a_reader_that_goes_away_loses_nothing(dream_dir, rm_dir, tmp_path):
    """`entrgi.py ... | head -1`: no traceback, status 0, and --output holds every result and the summary."""
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream_dir, "--reward-model", rm_dir, *SMALL,
           "--prompt", "Hello", "--method", "all", "--output", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()                                                        # as head -1 does
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 and "summary" in records[-1]


def test_the_same_command_twice_at_once_is_refused(dream_dir, rm_dir, tmp_path, capsys, monkeypatch):
    import fcntl
    out = tmp_path / "o.jsonl"
    with open(out, "ab") as other:                                          # a first run holds --output
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused_before_any_model(monkeypatch)
        with pytest.raises(SystemExit) as exit_info:
            main("--prompt", "Hello", "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    assert "is being written by another run" in one_error_line(capsys, exit_info)


def test_a_read_only_output_is_found_before_any_model(dream_dir, rm_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.jsonl"
    out.write_text("")
    out.chmod(0o444)
    if os.access(out, os.W_OK):
        pytest.skip("root writes read-only files: this machine cannot show the fault")
    refused_before_any_model(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    assert "the file is read-only" in one_error_line(capsys, exit_info)


@pytest.mark.parametrize("path", ["/proc/version", "/sys/kernel/entrgi-out.jsonl"])
def test_an_output_the_machine_will_not_write_is_found_before_any_model(path, dream_dir, rm_dir, capsys,
                                                                       monkeypatch):
    """Places even root cannot write (os.access says yes): found by opening them, before any model."""
    if not os.path.exists(os.path.dirname(path)):
        pytest.skip(f"{os.path.dirname(path)} is not on this machine")
    refused_before_any_model(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--output", path, dream_dir=dream_dir, rm_dir=rm_dir)
    assert f"cannot write --output '{path}'" in one_error_line(capsys, exit_info)


def test_a_resume_names_the_setting_that_differs_and_one_folder_is_one_setting(dream_dir, rm_dir, tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    main("--prompt", "Hello", "--output", out, dream_dir=dream_dir, rm_dir=rm_dir)
    main("--prompt", "Hello", "--output", out, dream_dir=dream_dir + "/", rm_dir=rm_dir)          # DIR/ is DIR
    assert "0 new" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--output", out, "--samples", "3", dream_dir=dream_dir, rm_dir=rm_dir)
    assert "was written with K = 2, this command has K = 3" in one_error_line(capsys, exit_info)


def test_a_reward_that_is_not_a_number_ends_the_run_without_writing_nan(dream_dir, rm_dir, tmp_path, capsys):
    nan_rm = tmp_path / "nan_rm"
    shutil.copytree(rm_dir, nan_rm)
    from safetensors.torch import load_file, save_file
    weights = load_file(str(nan_rm / "model.safetensors"))
    weights["score.weight"] = torch.full_like(weights["score.weight"], float("nan"))
    save_file(weights, str(nan_rm / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "o.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--output", str(out), dream_dir=dream_dir, rm_dir=str(nan_rm))
    assert "not a number" in one_error_line(capsys, exit_info)
    assert not out.exists() or "NaN" not in out.read_text()


def test_out_of_memory_says_what_to_lower(dream_dir, rm_dir, tmp_path, capsys, monkeypatch):
    def too_big(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
    monkeypatch.setattr(entrgi, "sample", too_big)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--samples", "10000", dream_dir=dream_dir, rm_dir=rm_dir)
    assert "out of memory" in (last := one_error_line(capsys, exit_info)) and "lower --batch-size" in last
