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

import conftest
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
    assert "check the name; the machine may be offline" in one_error_line(capsys, exit_info)

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
# text, fields, pipes, two runs at once, unwritable outputs, resumes, NaN, out of memory


def refused_before_any_model(monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(entrgi, "load_dllm", no_model)


def test_prompt_bytes_that_are_not_utf8_exit_2(dream_dir, rm_dir, tmp_path):
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream_dir, "--reward-model", rm_dir, *SMALL,
           "--prompt", os.fsdecode(b"caf\xe9 au lait")]                # Latin-1 bytes, as a shell passes them
    p = conftest.run(cmd, 120, text=True)
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
    p = conftest.run(cmd, 120, text=True)
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
    err = conftest.finish(p, 120)[1].decode()
    assert p.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err
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
    assert "line 1 was written with other settings than this command's (K = 2, not 3)" in one_error_line(
        capsys, exit_info)


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


# -----------------------------------------------------------------------------
# faults by their class: JSON lines, a silent hub, signals, model folders, numbers, text, output paths, the API


def no_weights_loaded(monkeypatch):
    """Fails the test if any model's weights start loading (the checks must come first)."""
    def loading(*a, **k):
        raise AssertionError("weights were loaded before the model folders were checked")
    monkeypatch.setattr(entrgi, "load_dllm", loading)
    monkeypatch.setattr(entrgi, "load_reward_model", loading)


@pytest.mark.parametrize("name, text", [
    ("prompts.JSONL", '{"prompt": "Hello", "id": 1}\n{"prompt": "Why?", "id": 2}\n'),
    ("prompts.ndjson", '{"prompt": "Hello", "id": 1}\n{"prompt": "Why?", "id": 2}\n'),
    ("prompts.json", '{"prompt": "Hello", "id": 1}\n{"prompt": "Why?", "id": 2}\n'),
    ("prompts.json", '[{"prompt": "Hello", "id": 1},\n {"prompt": "Why?", "id": 2}]\n'),
    ("prompts.txt", '{"prompt": "Hello", "id": 1}\n\n{"prompt": "Why?", "id": 2}\n'),
    ("prompts", '{"prompt": "Hello", "id": 1}\r\n{"prompt": "Why?", "id": 2}\r\n'),
])
def test_json_lines_by_any_name_are_json_lines(name, text, tmp_path):
    """JSON lines whatever the file is called (.JSONL, .ndjson, .json, .txt, no suffix), or a .json array:
    each object is a record, never a prompt of text."""
    path = tmp_path / name
    path.write_bytes(text.encode())
    assert entrgi.read_prompts(str(path)) == [{"prompt": "Hello", "id": 1}, {"prompt": "Why?", "id": 2}]


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", '{"prompt": "Hello"}\nWhy is the sky blue?\n', "line 1 is a JSON object, line 2 is not"),
    ("p.JSONL", '{"prompt": "Hello"}\nWhy?\n', "line 2 is not a JSON object"),
    ("p.json", '{"prompt": "Hello"}\n[1, 2]\n', "line 2 is not a JSON object"),
    ("p.json", '[{"prompt": "Hello"}, {"question": "Hi"}]', 'item 2 has no prompt'),
])
def test_a_prompts_file_half_json_is_refused_naming_the_lines(name, text, message, tmp_path, dream_dir, rm_dir,
                                                              capsys, monkeypatch):
    path = tmp_path / name
    path.write_text(text)
    no_weights_loaded(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompts-file", str(path), "--output", str(tmp_path / "o.jsonl"), dream_dir=dream_dir, rm_dir=rm_dir)
    assert message in one_error_line(capsys, exit_info)


def test_a_hub_that_never_answers_ends_in_one_line(rm_dir):
    """A hub endpoint (a mirror, a proxy) that takes the connection and never replies: one line naming it,
    within the wait allowed (ENTRGI_HUB_WAIT, 2 s here), status 2, and what runs without the hub."""
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: held.extend(server.accept() for _ in range(8)), daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "ENTRGI_HUB_WAIT": "2"}
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", "some-owner/some-dllm", "--reward-model",
           rm_dir, "--prompt", "Hello", "--device", "cpu"]
    p = conftest.run(cmd, 30, text=True, env=env)                # the hub's 2 s and torch's import, unloaded
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"the hub ({endpoint}) did not answer within 2 s" in last and "python -m toy" in last, last
    server.close()


@pytest.mark.slow
@pytest.mark.parametrize("moment, signal_name", [(0.2, "SIGINT"), (0.8, "SIGINT"), (2.0, "SIGINT"),
                                                 ("results", "SIGINT"), ("results", "SIGTERM")])
def test_a_signal_at_any_moment_ends_in_one_line(moment, signal_name, dream_dir, rm_dir, tmp_path):
    """Ctrl-C (or a kill) while torch loads (0.2 s), while the rest loads, once results are written: one line,
    status 128 + N, no traceback; --output holds whole lines, and the same command completes it."""
    import signal
    import time
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(["Hello", "Write a poem", "Why?"] * 6) + "\n")
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream_dir, "--reward-model", rm_dir,
           "--prompts-file", str(prompts), "--output", str(out), "--steps", "16", "--max-new-tokens", "16",
           "--samples", "2", "--device", "cpu"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if moment == "results":
        patience = conftest.Patience(120)
        while patience and (not out.exists() or out.read_text().count("\n") < 2):
            time.sleep(0.02)
    else:
        time.sleep(moment)
    assert p.poll() is None, "the run ended before the signal"
    signum = getattr(signal, signal_name)
    p.send_signal(signum)
    _, err = conftest.finish(p, 60)
    expected = "entrgi.py: interrupted" if signal_name == "SIGINT" else f"entrgi.py: stopped by {signal_name}"
    assert p.returncode == 128 + signum and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1] == expected
    text = out.read_text() if out.exists() else ""
    assert text.endswith("\n") or not text
    assert all(json.loads(line)["prompt"] for line in text.splitlines())
    if moment == "results":
        assert conftest.run(cmd, 300).returncode == 0                                      # and it resumes
        assert sum('"summary"' not in line[:12] for line in out.read_text().splitlines()) == 18


WRONG_FOLDERS = [   # (which flag, how the folder is made from the test models, what the one line says)
    ("--dllm", lambda d, r, t: r, "is no Dream or LLaDA diffusion LM: its config.json has model_type 'qwen3'"),
    ("--reward-model", lambda d, r, t: d, "(DreamModel) is not a sequence classifier"),
    ("--score-model", lambda d, r, t: d, "(DreamModel) is not a sequence classifier"),
    ("--dllm", lambda d, r, t: str(t), "holds no config.json"),
    ("--dllm", lambda d, r, t: os.path.join(d, "config.json"), "is a file: pass the folder that holds"),
    ("--dllm", lambda d, r, t: changed(d, t, lambda p: os.remove(p / "model.safetensors")),
     "lacks its weights (no *.safetensors file)"),
    ("--reward-model", lambda d, r, t: changed(r, t, lambda p: (p / "model.safetensors.index.json").write_text(
        '{"weight_map": {"score.weight": "model-00002-of-00002.safetensors"}}')),
     "lacks its weights (model-00002-of-00002.safetensors)"),
    ("--dllm", lambda d, r, t: changed(d, t, lambda p: os.remove(p / "vocab.json")), "cannot load the tokenizer"),
    ("--dllm", lambda d, r, t: changed(d, t, lambda p: edit_json(p / "config.json", vocab_size=64)),
     "rows of logits: they do not belong together"),
    ("--dllm", lambda d, r, t: changed(d, t, lambda p: edit_json(p / "tokenizer_config.json", chat_template=None)),
     "has no chat template"),
    ("--dllm", lambda d, r, t: changed(d, t, lambda p: edit_json(p / "config.json", architectures=["LLaDAModelLM"])),
     "has model_type 'Dream' but architecture LLaDAModelLM"),
    ("--reward-model",
     lambda d, r, t: changed(r, t, lambda p: edit_json(p / "config.json", id2label={"0": "a", "1": "b"})),
     "has 2 labels, not one score"),
    ("--reward-model", lambda d, r, t: changed(r, t, lambda p: edit_json(p / "config.json", vocab_size=100)),
     "embeddings: they do not belong together"),
]


def changed(src, tmp_path, change):
    path = tmp_path / f"copy-{len(os.listdir(tmp_path))}"
    shutil.copytree(src, path)
    change(path)
    return str(path)


def edit_json(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


@pytest.mark.parametrize("flag, make, message", WRONG_FOLDERS, ids=[f"{c[0]}-{c[2][:30]}" for c in WRONG_FOLDERS])
def test_a_model_folder_of_the_wrong_kind_is_named_before_any_weights(flag, make, message, dream_dir, rm_dir,
                                                                      tmp_path, capsys, monkeypatch):
    os.makedirs(tmp_path / "empty", exist_ok=True)
    folder = make(dream_dir, rm_dir, tmp_path / "empty")
    dirs = {"--dllm": dream_dir, "--reward-model": rm_dir}
    extra = [flag, folder] if flag == "--score-model" else []
    dirs.update({flag: folder} if flag != "--score-model" else {})
    no_weights_loaded(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", *extra, dream_dir=dirs["--dllm"], rm_dir=dirs["--reward-model"])
    last = one_error_line(capsys, exit_info)
    assert message in last and repr(folder) in last, last


@pytest.mark.parametrize("args, message", [
    (["--samples", "0"], "--samples: K must be int in [1, 65536], got 0"),
    (["--samples", "99999999999999999999"], "--samples: K must be int in [1, 65536]"),
    (["--samples", "2.5"], "argument --samples: invalid int value: '2.5'"),
    (["--steps", "0"], "--steps: T must be int in [1, 65536], got 0"),
    (["--steps", "-3"], "--steps: T must be int in [1, 65536], got -3"),
    (["--max-new-tokens", "0"], "--max-new-tokens: L must be int in [1, 65536], got 0"),
    (["--max-new-tokens", "70000"], "--max-new-tokens: L must be int in [1, 65536], got 70000"),
    (["--guidance-steps", "-1"], "--guidance-steps: M must be int in [0, 65536], got -1"),
    (["--guide-every", "0"], "--guide-every: guide_every must be int in [1, 65536], got 0"),
    (["--lr", "-0.5"], "--lr: lr must be float in [0.0, 1000.0], got -0.5"),
    (["--lr", "nan"], "--lr: lr must be float in [0.0, 1000.0], got nan"),
    (["--lr", "inf"], "--lr: lr must be float in [0.0, 1000.0], got inf"),
    (["--lr", "1e9"], "--lr: lr must be float in [0.0, 1000.0], got 1000000000.0"),
    (["--temperature", "0"], "--temperature: temperature must be float in [0.001, 1000.0], got 0.0"),
    (["--temperature=-inf"], "--temperature: temperature must be float in [0.001, 1000.0], got -inf"),
    (["--temperature", "nan"], "--temperature: temperature must be float in [0.001, 1000.0], got nan"),
    (["--top-p", "-0.1"], "--top-p: top_p must be float in [0.0, 1.0], got -0.1"),
    (["--top-p", "1.5"], "--top-p: top_p must be float in [0.0, 1.0], got 1.5"),
    (["--top-p", "nan"], "--top-p: top_p must be float in [0.0, 1.0], got nan"),
    (["--seed", "-1"], "--seed: seed must be int in [0, 9223372036854775807], got -1"),
    (["--seed", str(2**63)], "--seed: seed must be int in [0, 9223372036854775807]"),
    (["--block-length", "0"], "--block-length: block_length must divide L = 4 into blocks that share T = 2"),
    (["--block-length", "-4"], "--block-length: block_length must divide L = 4"),
    (["--block-length", "3"], "--block-length: block_length must divide L = 4"),
    (["--block-length", "8"], "--block-length: block_length must divide L = 4"),
    (["--block-length", "1"], "--block-length: block_length must divide L = 4 into blocks that share T = 2 evenly"),
    (["--batch-size", "0"], "--batch-size must lie in [1, 65536], got 0"),
    (["--batch-size", "70000"], "--batch-size must lie in [1, 65536], got 70000"),
    (["--benchmark", "tiny", "--benchmark-steps", "0"], "--benchmark-steps and --benchmark-layers in [1, 1000]"),
    (["--benchmark", "tiny", "--benchmark-layers", "-2"], "--benchmark-steps and --benchmark-layers in [1, 1000]"),
])
def test_numbers_out_of_their_range_are_refused_naming_the_flag(args, message, dream_dir, rm_dir, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(entrgi, "open_dllm", lambda *a: pytest.fail("a model was opened"))
    monkeypatch.setattr(entrgi, "benchmark", lambda *a: pytest.fail("the benchmark ran"))
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main(["--prompt", "Hello", "--dllm", dream_dir, "--reward-model", rm_dir, "--steps", "2",
                     "--max-new-tokens", "4", "--device", "cpu", *args])
    assert message in one_error_line(capsys, exit_info)


def test_a_seed_too_large_for_the_last_prompt_is_refused(tmp_path, dream_dir, rm_dir, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\nWhy?\n")
    with pytest.raises(SystemExit) as exit_info:
        main("--prompts-file", str(prompts), "--output", str(tmp_path / "o.jsonl"), "--seed", str(2**63 - 1),
             dream_dir=dream_dir, rm_dir=rm_dir)
    assert f"the seed must be at most {2**63 - 2} for 2 prompts" in one_error_line(capsys, exit_info)


@pytest.mark.parametrize("args, K, L", [
    (["--samples", "1"], 1, 6),                                      # one sample: Top@1 = Avg@1
    (["--max-new-tokens", "1", "--steps", "1"], 2, 1),               # one token, one step
    (["--steps", "20"], 2, 6),                                       # more steps than tokens: the extra reveal none
    (["--top-p", "0"], 2, 6),                                        # the likeliest token alone
    (["--guide-every", "65536", "--lr", "0"], 2, 6),                 # unguided two ways
    (["--temperature", "0.001", "--block-length", "6"], 2, 6),       # nearly greedy; one block of L
    (["--temperature", "1000", "--guidance-steps", "0"], 2, 6),      # nearly uniform
])
def test_numbers_at_their_edges_run(args, K, L, tmp_path, dream_dir, rm_dir, capsys):
    out = tmp_path / "o.jsonl"
    main("--prompt", "Hello", "--output", str(out), *args, dream_dir=dream_dir, rm_dir=rm_dir)
    [result] = [json.loads(line) for line in out.read_text().splitlines() if '"summary"' not in line[:12]]
    R = [r["reward"] for r in result["responses"]]
    assert len(R) == K and result["top1_reward"] == max(R) and result["settings"]["L"] == L
    assert "note: T = 20 steps for L = 6 tokens" in capsys.readouterr().err or "20" not in args


TEXTS = ["Hello 👋🏽 world", "為什麼天空是藍色的？", "لماذا السماء زرقاء؟",
         "zero\u200bwidth\u200djoiner\ufeff",
         "bell\x07 escape\x1b[31mred\x1b[0m nul\x00 end", "line\u2028separator", "ENTRGIRESPONSESLOT inside",
         "<|im_end|> a token's text", "tab\there", "  leading and trailing  "]


def test_text_at_its_edges_comes_back_exactly(tmp_path, dream_dir, rm_dir):
    """Prompts with emoji, CJK, right-to-left text, zero-width characters, control characters (NUL and
    escape sequences), a line separator, the text the reward model's chat is split at, a chat token's
    text: each result carries its prompt exactly as given; and a standard output that cannot show them
    (an ASCII pipe) shows them escaped, status 0."""
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "o.jsonl"
    main("--prompts-file", str(src), "--output", str(out), "--batch-size", "4", dream_dir=dream_dir, rm_dir=rm_dir)
    records = [json.loads(line) for line in out.read_text().splitlines() if '"summary"' not in line[:12]]
    assert sorted(r["prompt"] for r in records) == sorted(TEXTS)
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream_dir, "--reward-model", rm_dir, *SMALL,
           "--prompt", TEXTS[0] + TEXTS[1]]
    p = conftest.run(cmd, 120, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr[-2000:]
    assert b"trajectory 1: reward" in p.stdout


@pytest.mark.parametrize("text, message", [
    ("word " * 300, "prompt 1 (from 0) needs"),
    ("\u3000\u00a0\n", "line 2: the prompt is empty"),
])
def test_a_prompt_that_cannot_run_is_named(text, message, tmp_path, dream_dir, rm_dir, capsys, monkeypatch):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "Hello"}) + "\n" + json.dumps({"prompt": text}) + "\n")
    no_weights_loaded(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main("--prompts-file", str(src), "--output", str(tmp_path / "o.jsonl"), dream_dir=dream_dir, rm_dir=rm_dir)
    assert message in one_error_line(capsys, exit_info)


def output_cases(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\n")
    return [
        (["--output", ""], "--output names no file"),
        (["--trace", " "], "--trace names no file"),
        (["--output", str(tmp_path / "missing" / "o.jsonl")], "its folder does not exist"),
        (["--output", str(tmp_path / "new") + "/"], "it is a folder"),
        (["--trace", str(tmp_path)], "it is a folder"),
        (["--output", str(tmp_path / "same"), "--trace", str(tmp_path / "same")], "--output and --trace name the same"),
        (["--output", str(fifo)], "a pipe that nothing reads"),
        (["--prompts-file", str(prompts), "--output", str(prompts)],
         "--output and --prompts-file name the same file"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_odd_output_paths_are_refused_before_any_model(case, tmp_path, dream_dir, rm_dir, capsys, monkeypatch):
    args, message = output_cases(tmp_path)[case]
    prompt = [] if "--prompts-file" in args else ["--prompt", "Hello"]
    monkeypatch.setattr(entrgi, "open_dllm", lambda *a: pytest.fail("a model was opened"))
    with pytest.raises(SystemExit) as exit_info:
        main(*prompt, *args, dream_dir=dream_dir, rm_dir=rm_dir)
    assert message in one_error_line(capsys, exit_info)


def test_an_output_refused_only_at_the_end_loses_no_result(tmp_path, dream_dir, rm_dir, capsys, monkeypatch):
    """--output on a device that takes no byte (/dev/full), and a --trace folder removed during the run:
    status 74 in one line; the results the output did not take are on standard output."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--output", "/dev/full", dream_dir=dream_dir, rm_dir=rm_dir)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 74 and "Traceback" not in err
    assert "cannot write --output '/dev/full'" in err.strip().splitlines()[-1] and "on standard output" in err
    assert json.loads(out.strip().splitlines()[-1])["prompt"] == "Hello"
    folder = tmp_path / "pages"
    folder.mkdir()
    generate = entrgi.generate
    monkeypatch.setattr(entrgi, "generate", lambda *a, **k: shutil.rmtree(folder) or generate(*a, **k))
    results = tmp_path / "o.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", "--output", str(results), "--trace", str(folder / "t.html"), dream_dir=dream_dir,
             rm_dir=rm_dir)
    assert "cannot write --trace" in one_error_line(capsys, exit_info, status=74)
    assert json.loads(results.read_text().splitlines()[0])["prompt"] == "Hello"


def api_cases():
    V, L = 6, 4
    E = torch.randn(V, 3)
    den = lambda y: torch.zeros(y.shape[0], y.shape[1], V)
    reward = lambda e, tokens: e.sum((1, 2))
    cfg = entrgi.Config(K=2, T=4, L=L)
    logits = torch.zeros(2, 3, V)
    y, idx = torch.full((2, L), V - 1), torch.tensor([[0, 1, 2]] * 2)
    return [   # (a call, the error, what its message says)
        (lambda: entrgi.Config(K=0).check(), ValueError, "K must be int in [1, 65536], got 0"),
        (lambda: entrgi.Config(K="4").check(), ValueError, "K must be int"),
        (lambda: entrgi.Config(K=True).check(), ValueError, "K must be int"),
        (lambda: entrgi.Config(lr=float("nan")).check(), ValueError, "lr must be float"),
        (lambda: entrgi.Config(method="hard").check(), ValueError, "method must be one of"),
        (lambda: entrgi.Config(block_length=3, L=8).check(), ValueError, "block_length must divide L = 8"),
        (lambda: entrgi.Config(eos_last="no").check(), ValueError, "eos_last must be one of"),
        (lambda: entrgi.sample(den, reward, E, [], V - 1, [0], cfg), ValueError, "seeds must be a list of ints"),
        (lambda: entrgi.sample(den, reward, E, [-1], V - 1, [0], cfg), ValueError, "seeds must be a list of ints"),
        (lambda: entrgi.sample(den, reward, E, [0.5], V - 1, [0], cfg), ValueError, "seeds must be a list of ints"),
        (lambda: entrgi.sample(den, reward, E, [0], V - 1, [0], entrgi.Config(K=0)), ValueError, "K must be int"),
        (lambda: entrgi.sample(den, reward, E, [0], V - 1, [0], cfg, y0=torch.zeros(3, L, dtype=torch.long)),
         ValueError, "y0 must be long (2, 4)"),
        (lambda: entrgi.sample(den, reward, E, [0], V - 1, [0], cfg, y0=torch.zeros(2, L)), ValueError,
         "y0 must be long"),
        (lambda: entrgi.sample(lambda y: torch.zeros(2, V), reward, E, [0], V - 1, [0], cfg), ValueError,
         "denoiser gave (2, 6), not float logits (N, L, V) = (2, 4, 6)"),
        (lambda: entrgi.sample(den, lambda e, t: e.sum(), E, [0], V - 1, [0], cfg), ValueError,
         "reward gave (), not R (N,) = (2,)"),
        (lambda: entrgi.sample(lambda y: torch.zeros(2, L, V, dtype=torch.long), reward, E, [0], V - 1, [0], cfg),
         ValueError, "denoiser gave (2, 4, 6), not float logits (N, L, V) = (2, 4, 6)"),
        (lambda: entrgi.sample(den, reward, E[:5], [0], V - 1, [0], cfg), ValueError,
         "denoiser gave (2, 4, 6), not float logits (N, L, V) = (2, 4, 5): N = len(seeds) x K, V = len(embedding)"),
        (lambda: entrgi.sample(lambda y: torch.zeros(2, L, V), reward, E, [0, 1], V - 1, [0], cfg), ValueError,
         "denoiser gave (2, 4, 6), not float logits (N, L, V) = (4, 4, 6)"),
        (lambda: entrgi.sample(den, reward, [[0.0]], [0], V - 1, [0], cfg), ValueError, "embedding must be E^R (V, d)"),
        (lambda: entrgi.sample(den, lambda e, t: t.float().sum(-1), E, [0], V - 1, [0], cfg), ValueError,
         "reward: R has no gradient path to e (scored from the tokens alone, or detached)"),
        (lambda: entrgi.sample(den, lambda e, t: e.detach().sum((1, 2)), E, [0], V - 1, [0], cfg), ValueError,
         "reward: R has no gradient path to e"),
        (lambda: entrgi.sample(den, lambda e, t: t.float().sum(-1) * torch.ones((), requires_grad=True), E, [0],
                               V - 1, [0], cfg), ValueError, "reward: R does not depend on e, its first argument"),
        (lambda: entrgi.relax(logits, E, "hard", 1.0, 1.0, None), ValueError, "method must be entrgi, aps or soft"),
        (lambda: entrgi.relax(logits.long(), E, "soft", 1.0, 1.0, None), TypeError, "float tensors of one V"),
        (lambda: entrgi.relax(logits, E[:5], "soft", 1.0, 1.0, None), TypeError, "embedding (V, d)"),
        (lambda: entrgi.relax(logits, E, "soft", 0.0, 1.0, None), ValueError, "temperature must be > 0"),
        (lambda: entrgi.guide(logits, y, idx[:, :2], reward, E, None), ValueError, "do not agree in N and m"),
        (lambda: entrgi.guide(logits, y[:1], idx, reward, E, None), ValueError, "do not agree in N and m"),
        (lambda: entrgi.guide(logits, y, idx, reward, E, None, M=-1), ValueError, "M must be an int >= 0"),
        (lambda: entrgi.guide(logits, y, idx, reward, E, None, lr=float("nan")), ValueError, "lr >= 0"),
        (lambda: entrgi.logits_hook(reward, E, cfg, V - 1, -1, None), ValueError, "prompt_length must be an int"),
        (lambda: entrgi.logits_hook(reward, E, entrgi.Config(M=-2), V - 1, 2, None), ValueError, "M must be int"),
        (lambda: entrgi.logits_hook(reward, E, cfg, V - 1, 2, None)(0, y, torch.zeros(2, L + 1, V)), ValueError,
         "tokens (N, P + L) and logits (N, P + L, V)"),
        (lambda: entrgi.logits_hook(reward, E, cfg, V - 1, 4, None)(0, y, torch.zeros(2, L, V)), ValueError,
         "P = 4"),
    ]


@pytest.mark.parametrize("case", range(34))
def test_the_python_api_names_the_argument_that_does_not_fit(case):
    call, error, message = api_cases()[case]
    with pytest.raises(error) as raised:
        call()
    assert type(raised.value) is error and message in str(raised.value), str(raised.value)


def test_a_path_whose_first_folder_exists_is_a_path_not_a_hub_name(tmp_path, rm_dir, capsys, monkeypatch):
    """`--dllm models/dreem` (a typo) where models/ exists: no such directory, not a hub name to download."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main("--prompt", "Hello", dream_dir="models/dreem", rm_dir=rm_dir)
    last = one_error_line(capsys, exit_info)
    assert "model 'models/dreem': no such directory here" in last and "offline" not in last


# -----------------------------------------------------------------------------
# strict loading, the output as one run's ledger, links


def relabelled(src, tmp_path, architecture, **fields):
    """A copy of a model folder whose config.json names another architecture (its weights as they were)."""
    return changed(src, tmp_path, lambda p: edit_json(p / "config.json", architectures=[architecture], **fields))


@pytest.mark.parametrize("flags, which, architecture, message", [
    (["--reward-model"], "lm", "Qwen3ForSequenceClassification", "missing ['score.weight']"),
    (["--score-model"], "lm", "Qwen3ForSequenceClassification", "missing ['score.weight']"),
    (["--reward", "loglik", "--reward-model"], "rm", "Qwen3ForCausalLM", "unexpected ['score.weight']"),
])
def test_weights_that_do_not_fit_their_class_are_refused_for_every_model(flags, which, architecture, message,
                                                                         dream_dir, rm_dir, lm_dir, tmp_path, capsys,
                                                                         monkeypatch):
    """A causal LM's weights under a config.json relabelled ...ForSequenceClassification (transformers would fill
    the score head at random), as the reward model or the judge; a classifier's as a causal LM: refused before any
    text is generated, naming what is missing or unexpected; the dLLM likewise (one weight taken out)."""
    os.makedirs(tmp_path / "copies")
    folder = relabelled({"lm": lm_dir, "rm": rm_dir}[which], tmp_path / "copies", architecture, num_labels=1)
    monkeypatch.setattr(entrgi, "generate", lambda *a, **k: pytest.fail("generated"))
    models = ["--reward-model", rm_dir, *flags, folder] if flags == ["--score-model"] else [*flags, folder]
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main(["--dllm", dream_dir, *models, "--prompt", "Hello", *SMALL])
    last = one_error_line(capsys, exit_info)
    assert f"{folder!r} does not hold a {architecture}'s weights: " in last and message in last, last
    from safetensors.torch import load_file, save_file
    weights = load_file(os.path.join(dream_dir, "model.safetensors"))
    del weights["model.norm.weight"]
    dllm = changed(dream_dir, tmp_path / "copies", lambda p: save_file(weights, str(p / "model.safetensors"),
                                                                       metadata={"format": "pt"}))
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main(["--dllm", dllm, "--reward-model", rm_dir, "--prompt", "Hello", *SMALL])
    assert f"{dllm!r} does not hold Dream's weights: missing ['model.norm.weight']" in one_error_line(capsys,
                                                                                                   exit_info)


def test_the_output_is_one_run_s_ledger(dream_dir, rm_dir, tmp_path, capsys):
    """Each result line records each model's identity (a hash of its folder's files); a resume whose reward model's
    weights changed in place, a file holding a result twice, lines from two runs and a summary of another run are
    refused, naming the lines; the same command again leaves a finished file as it was."""
    rm = tmp_path / "rm"
    shutil.copytree(rm_dir, rm)
    out = tmp_path / "o.jsonl"
    run = lambda *args, output=out: main("--prompt", "Hello", "--output", str(output), *args, dream_dir=dream_dir,
                                         rm_dir=str(rm))
    run()
    lines = out.read_text().splitlines()
    settings = json.loads(lines[0])["settings"]
    assert len(settings["dllm_sha256"]) == len(settings["reward_model_sha256"]) == 16
    assert settings["score_model_sha256"] is None and settings["reward"] == "score"
    run()
    assert out.read_text().splitlines() == lines                       # finished: nothing added

    def refused(text, message):
        out.write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            run()
        last = one_error_line(capsys, exit_info)
        assert message in last, last
    refused(lines[0] + "\n" + lines[0] + "\n", "lines 1 and 2 both hold prompt 0's entrgi result")
    other = tmp_path / "other.jsonl"
    run("--samples", "3", output=other)
    refused("\n".join([lines[0], *other.read_text().splitlines()]) + "\n", "lines 1 and 2 come from two runs (K = 3")
    refused(lines[0] + "\n" + other.read_text().splitlines()[-1] + "\n", "lines 1 and 2 come from two runs (K = 3")
    refused(other.read_text(), "line 1 was written with other settings than this command's (K = 3, not 2)")
    from safetensors.torch import load_file, save_file
    weights = load_file(str(rm / "model.safetensors"))
    weights["score.weight"] = weights["score.weight"] + 0.01           # the same folder, other weights
    save_file(weights, str(rm / "model.safetensors"), metadata={"format": "pt"})
    refused("\n".join(lines) + "\n", "(reward_model_sha256 = '" + settings["reward_model_sha256"])


def test_outputs_given_as_links_are_written_where_the_links_lead(dream_dir, rm_dir, tmp_path):
    """--output and --trace as symbolic links (one to a file not yet made, one to an old page): the results and the
    page reach the files the links lead to, the links stay links, and a link lying where a temporary file would go
    is neither followed nor replaced."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "pages").mkdir()
    os.symlink(tmp_path / "runs" / "o.jsonl", tmp_path / "o.jsonl")
    (tmp_path / "pages" / "t.html").write_text("an old page")
    os.symlink(tmp_path / "pages" / "t.html", tmp_path / "t.html")
    (tmp_path / "victim").write_text("untouched")
    os.symlink(tmp_path / "victim", tmp_path / "pages" / "t.html.tmp")
    main("--prompt", "Hello", "--output", str(tmp_path / "o.jsonl"), "--trace", str(tmp_path / "t.html"),
         dream_dir=dream_dir, rm_dir=rm_dir)
    assert os.path.islink(tmp_path / "o.jsonl") and os.path.islink(tmp_path / "t.html")
    assert len((tmp_path / "runs" / "o.jsonl").read_text().splitlines()) == 2             # a result, a summary
    assert (tmp_path / "pages" / "t.html").read_text().startswith("<!doctype html>")
    assert (tmp_path / "victim").read_text() == "untouched" and os.path.islink(tmp_path / "pages" / "t.html.tmp")
    assert sorted(os.listdir(tmp_path / "pages")) == ["t.html", "t.html.tmp"]              # no temporary file left
