"""Many prompts: --prompts-file, --batch-size, resumable output, torchrun, --method all."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import conftest
import entrgi

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["Hello", "Write a short poem about the sea and the waves, please", "Explain gradients to a child",
           "One two three", "Good answers are helpful and kind. Are they?", "Why?"]
SMALL = ["--steps", "4", "--max-new-tokens", "6", "--samples", "2", "--device", "cpu"]


def prompt_lines(path):
    """The output's prompt lines, as text, and its summary records."""
    with open(path) as f:
        lines = f.read().splitlines()
    summaries = [json.loads(l)["summary"] for l in lines if l.startswith('{"summary"')]
    return sorted(l for l in lines if '"summary"' not in l[:12]), summaries


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n\n")
    return str(path)


def run_main(*args, dream_dir, rm_dir):
    entrgi.main(["--dllm", dream_dir, "--reward-model", rm_dir, *SMALL, *args])


LONG = ["--steps", "32", "--max-new-tokens", "32", "--samples", "2", "--device", "cpu", "--method", "all"]
EIGHT = PROMPTS + ["A much longer prompt than the others, about the quick brown fox and the lazy dog", "Hi"]


def results(path):
    """The output's result records by (index, method), the settings' batch size left out."""
    records = [json.loads(line) for line in open(path) if not line.startswith('{"summary"')]
    for r in records:
        r["settings"].pop("batch_size")
    return {(r["index"], r["method"]): r for r in records}


@pytest.fixture(scope="module")
def batched(dream_dir, rm_dir, tmp_path_factory):
    """8 prompts of different lengths, T = L = 32, every method, at batch sizes 1, 2, 3 and 8."""
    root = tmp_path_factory.mktemp("batched")
    (root / "p.txt").write_text("\n".join(EIGHT) + "\n")
    runs = {}
    for size in (1, 2, 3, 8):
        entrgi.main(["--dllm", dream_dir, "--reward-model", rm_dir, *LONG, "--prompts-file", str(root / "p.txt"),
                     "--batch-size", str(size), "--output", str(root / f"b{size}.jsonl")])
        runs[size] = results(root / f"b{size}.jsonl")
    return root, runs


@pytest.mark.slow
def test_a_prompt_s_result_does_not_depend_on_its_batch(batched):
    """Bitwise: every response, reward and number of each prompt and method is the same at batch sizes 1, 2, 3
    and 8 (the last holds all eight prompts together)."""
    _, runs = batched
    assert len(runs[1]) == 8 * len(entrgi.METHODS)
    for size in (2, 3, 8):
        assert runs[size] == runs[1], size
    texts = {r["responses"][0]["text"] for r in runs[1].values()}
    assert len(texts) > 8                                                   # the runs are not trivially alike


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(batched, dream_dir, rm_dir):
    root, runs = batched
    args = ["--dllm", dream_dir, "--reward-model", rm_dir, "--prompts-file", str(root / "p.txt"), *LONG,
            "--batch-size", "3", "--output", str(root / "torchrun.jsonl")]
    run = conftest.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(HERE, "entrgi.py"), *args], 600, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert results(root / "torchrun.jsonl") == runs[1]
    summaries = [json.loads(line)["summary"] for line in open(root / "torchrun.jsonl") if "summary" in line[:12]]
    assert len(summaries) == 1 and summaries[0]["new_results"] == 8 * len(entrgi.METHODS)


def test_jsonl_fields_are_carried(tmp_path, dream_dir, rm_dir):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "Hello", "id": "a-1", "subset": "chat"}) + "\n")
    out = str(tmp_path / "o.jsonl")
    run_main("--prompts-file", str(src), "--output", out, dream_dir=dream_dir, rm_dir=rm_dir)
    [line], _ = prompt_lines(out)
    record = json.loads(line)
    assert record["id"] == "a-1" and record["subset"] == "chat" and record["prompt"] == "Hello"


def cli(*args, env=None):
    return subprocess.Popen([sys.executable, os.path.join(HERE, "entrgi.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def succeeds(process):
    """The run ended with status 0 (else its standard error is shown)."""
    _, err = conftest.finish(process, 300)
    assert process.returncode == 0, err[-3000:]
    return True


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, dream_dir, rm_dir):
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(PROMPTS * 3) + "\n")                       # 18 prompts
    args = ["--dllm", dream_dir, "--reward-model", rm_dir, "--prompts-file", str(prompts), "--steps", "12",
            "--max-new-tokens", "12", "--samples", "2", "--device", "cpu"]
    full, part = str(tmp_path / "full.jsonl"), str(tmp_path / "part.jsonl")
    p = cli(*args, "--output", part)
    patience = conftest.Patience(120)
    while patience and (not os.path.exists(part) or open(part).read().count("\n") < 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed = open(part).read()
    assert 2 <= killed.count("\n") < 18 and killed.endswith("\n")            # stopped partway, whole lines only
    assert succeeds(cli(*args, "--output", part))                          # resume
    assert succeeds(cli(*args, "--output", full))                          # uninterrupted
    lines_part, summaries = prompt_lines(part)
    lines_full, _ = prompt_lines(full)
    assert lines_part == lines_full and len(lines_part) == 18
    assert summaries[-1]["new_results"] == 18 - killed.count("\n")
    before = open(part).read()
    assert succeeds(cli(*args, "--output", part))                          # a third run changes nothing
    assert open(part).read() == before


def test_unfinished_last_line_is_dropped_on_resume(prompts_file, tmp_path, dream_dir, rm_dir):
    out = tmp_path / "o.jsonl"
    run_main("--prompts-file", prompts_file, "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    whole = out.read_text()
    lines = [l for l in whole.splitlines() if not l.startswith('{"summary"')]
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])              # as if cut inside line 4
    run_main("--prompts-file", prompts_file, "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    assert prompt_lines(str(out))[0] == sorted(lines)


def test_method_all_writes_the_table(prompts_file, tmp_path, dream_dir, rm_dir, capsys):
    out = str(tmp_path / "all.jsonl")
    run_main("--prompts-file", prompts_file, "--output", out, "--method", "all", dream_dir=dream_dir, rm_dir=rm_dir)
    lines, [summary] = prompt_lines(out)
    records = list(map(json.loads, lines))
    assert len(records) == 4 * len(PROMPTS)
    assert sorted(summary["table"]) == sorted(entrgi.METHODS)
    for m in entrgi.METHODS:
        mine = [r for r in records if r["method"] == m]
        assert [r["seed"] for r in sorted(mine, key=lambda r: r["index"])] == list(range(len(PROMPTS)))
        assert summary["table"][m]["prompts"] == len(PROMPTS)
        assert summary["table"][m]["avg_reward"] == pytest.approx(sum(r["avg_reward"] for r in mine) / len(mine))
    printed = capsys.readouterr().out
    assert all(m in printed for m in entrgi.METHODS) and "Top@1" in printed and "Avg@2" in printed


def test_bad_prompts_files_and_outputs_exit_2(tmp_path, dream_dir, rm_dir, capsys):
    ok = tmp_path / "ok.txt"
    ok.write_text("Hello\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    no_prompt = tmp_path / "bad.jsonl"
    no_prompt.write_text('{"prompt": "Hi"}\n{"question": "Hi"}\n')
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"id": 1, "text": "someone else\'s results"}\n')
    other = tmp_path / "other.jsonl"                        # written by this tool, for another prompts file
    other.write_text(json.dumps({"index": 0, "prompt": "Bye", "method": "entrgi"}) + "\n")
    cases = [
        (["--prompts-file", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o1.jsonl")],
         "cannot read --prompts-file"),
        (["--prompts-file", str(empty), "--output", str(tmp_path / "o2.jsonl")], "holds no prompt"),
        (["--prompts-file", str(no_prompt), "--output", str(tmp_path / "o3.jsonl")],
         "line 2 has no prompt: it needs a non-empty \"prompt\" field"),
        (["--prompts-file", str(ok), "--output", str(foreign)], "was not written by this command"),
        (["--prompts-file", str(ok), "--output", str(other)], "was not written by this command"),
        (["--prompts-file", str(ok), "--output", str(tmp_path)], "is a folder"),
        (["--prompts-file", str(ok)], "needs --output"),
        (["--prompts-file", str(ok), "--output", str(tmp_path / "o4.jsonl"), "--batch-size", "0"],
         "--batch-size must lie in [1, 65536]"),
        (["--prompts-file", str(ok), "--prompt", "Hi", "--output", str(tmp_path / "o5.jsonl")], "one of --prompt"),
    ]
    before = {p: p.read_bytes() for p in (foreign, other)}
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_main(*args, dream_dir=dream_dir, rm_dir=rm_dir)
        assert exit_info.value.code == 2, args
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("entrgi.py: error: ") and message in last, (args, last)
    assert {p: p.read_bytes() for p in (foreign, other)} == before                    # untouched
    assert not any((tmp_path / f"o{i}.jsonl").exists() for i in range(1, 6))


def test_an_independent_judge_scores_every_response(tmp_path, dream_dir, rm_dir, judge_dir, capsys):
    """--score-model: each response gets the judge's score beside its reward; top1_score is the judge's score of
    the best_response (the one the reward ranks first), avg_score their mean; the table shows both per method.
    With the guiding reward model as its own judge, score equals reward."""
    src = tmp_path / "p.txt"
    src.write_text("Hello\nWrite a poem\n")
    for judge, same in ((rm_dir, True), (judge_dir, False)):
        out = str(tmp_path / f"{same}.jsonl")
        run_main("--prompts-file", str(src), "--output", out, "--score-model", judge, "--method", "all",
                 dream_dir=dream_dir, rm_dir=rm_dir)
        lines, [summary] = prompt_lines(out)
        records = list(map(json.loads, lines))
        for r in records:
            S = [x["score"] for x in r["responses"]]
            best = [x["text"] for x in r["responses"]].index(r["best_response"])
            assert r["top1_score"] == S[best] and r["avg_score"] == pytest.approx(sum(S) / len(S))
            assert all((x["score"] == pytest.approx(x["reward"], abs=1e-5)) == same for x in r["responses"])
        for m in entrgi.METHODS:
            mine = [r for r in records if r["method"] == m]
            assert summary["table"][m]["avg_score"] == pytest.approx(sum(r["avg_score"] for r in mine) / len(mine))
        assert summary["settings"]["score_model"] == judge
        assert "judge Top@1" in capsys.readouterr().out


def test_a_bad_judge_exits_2_before_generating(tmp_path, dream_dir, rm_dir, capsys, monkeypatch):
    monkeypatch.setattr(entrgi, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(SystemExit) as exit_info:
        run_main("--prompt", "Hi", "--score-model", dream_dir, dream_dir=dream_dir, rm_dir=rm_dir)
    assert exit_info.value.code == 2
    assert "(DreamModel) is not a sequence classifier" in capsys.readouterr().err.strip().splitlines()[-1]


def test_prompt_field_reads_a_benchmark_s_field_and_keeps_every_field(tmp_path, dream_dir, rm_dir, capsys):
    src = tmp_path / "judgebench.jsonl"
    src.write_text(json.dumps({"question": "Hello", "pair_id": "a-1", "prompt": "not this one"}) + "\n"
                   + json.dumps({"question": "Why?", "pair_id": "a-2"}) + "\n")
    out = str(tmp_path / "o.jsonl")
    args = ("--prompts-file", str(src), "--output", out, "--prompt-field", "question")
    run_main(*args, dream_dir=dream_dir, rm_dir=rm_dir)
    records = sorted(map(json.loads, prompt_lines(out)[0]), key=lambda r: r["index"])
    assert [(r["question"], r["pair_id"]) for r in records] == [("Hello", "a-1"), ("Why?", "a-2")]
    assert records[0]["prompt"] == "not this one" and "prompt" not in records[1]      # kept as given
    text = {"prompt": "Hello"}                                                       # the same seed, the same text
    plain = str(tmp_path / "plain.jsonl")
    run_main("--prompt", text["prompt"], "--output", plain, dream_dir=dream_dir, rm_dir=rm_dir)
    assert json.loads(prompt_lines(plain)[0][0])["responses"] == records[0]["responses"]
    before = open(out).read()
    run_main(*args, dream_dir=dream_dir, rm_dir=rm_dir)                              # resumes: nothing new
    assert open(out).read() == before                                                # a finished ledger stays
    (tmp_path / "missing.jsonl").write_text(json.dumps({"question": "Hi"}) + "\n" + json.dumps({"q": "Hi"}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        run_main("--prompts-file", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "m.jsonl"),
                 "--prompt-field", "question", dream_dir=dream_dir, rm_dir=rm_dir)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and 'line 2 has no prompt: it needs a non-empty "question" field' in last


@pytest.mark.slow
def test_torchrun_a_process_that_fails_ends_every_process_promptly(prompts_file, tmp_path, dream_dir, rm_dir):
    """A full disk under torchrun (a file size limit, so that a write fails in whichever process meets it):
    every process ends within seconds with the same line and status 74, not at the process group's
    timeout; the output holds whole lines."""
    import resource
    import signal as signals
    out = tmp_path / "o.jsonl"

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
        signals.signal(signals.SIGXFSZ, signals.SIG_IGN)                    # a write past it fails, EFBIG
    args = ["--dllm", dream_dir, "--reward-model", rm_dir, "--prompts-file", prompts_file, *SMALL, "--output", str(out)]
    run = conftest.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(HERE, "entrgi.py"), *args], 120, text=True, preexec_fn=small_disk,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                            "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode != 0                                              # promptly: within the limit
    errors = re.findall(r"entrgi\.py: error: cannot write --output .*?(?:\(a full disk\?\)|File too large)",
                        run.stderr)                                         # (two
    assert len(errors) == 2 and errors[0] == errors[1], run.stderr[-2000:]    # processes' lines may interleave)
    assert re.search(r"exitcode\s*: 74", run.stderr)                      # torchrun's report of the processes
    assert all(json.loads(line) for line in out.read_text().splitlines())


@pytest.mark.slow
def test_torchrun_on_an_output_another_run_holds_is_refused(prompts_file, tmp_path, dream_dir, rm_dir):
    """A second job on an --output that a first one writes: under torchrun too its first process takes the
    lock, and every process ends with the same line and status 2; the file is left as it was."""
    import fcntl
    out = tmp_path / "o.jsonl"
    args = ["--dllm", dream_dir, "--reward-model", rm_dir, "--prompts-file", prompts_file, *SMALL, "--output", str(out)]
    with open(out, "ab") as other:                                           # the first run holds it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run = conftest.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            os.path.join(HERE, "entrgi.py"), *args], 300, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    lines = re.findall(r"entrgi\.py: error: --output .*? is being written by another run", run.stderr)
    assert run.returncode != 0 and len(lines) == 2, run.stderr[-3000:]
    assert re.search(r"exitcode\s*: 2", run.stderr) and out.read_text() == ""


@pytest.mark.parametrize("name, text, expected", [
    ("p.csv", 'prompt,category\r\nHello,chat\r\n"Why, then?",science\r\n',
     [{"prompt": "Hello", "category": "chat"}, {"prompt": "Why, then?", "category": "science"}]),
    ("p.TSV", "id\tprompt\n1\tHello\n\n2\tWhy?\n", [{"id": "1", "prompt": "Hello"}, {"id": "2", "prompt": "Why?"}]),
    ("p.txt", "\ufeffprompt,category\nHello,chat\n", [{"prompt": "Hello", "category": "chat"}]),
    ("p.csv", 'prompt\n"two\nlines"\n', [{"prompt": "two\nlines"}]),
    ("p.json", '["Hello", "Why?"]', [{"prompt": "Hello"}, {"prompt": "Why?"}]),
    ("prompts", '[\n  "Hello"\n]\n', [{"prompt": "Hello"}]),
    ("p.txt", "prompt, please: a poem\nWhy?\n", [{"prompt": "prompt, please: a poem"}, {"prompt": "Why?"}]),
])
def test_prompts_files_in_the_formats_people_export(name, text, expected, tmp_path):
    """CSV and TSV with a header row naming the prompt column (by the name, or by a first line of names; quoted
    values, CRLF, a byte-order mark, blank lines), a JSON list of strings; a header row is never a prompt, and a
    first line of text that is no header stays a prompt."""
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    assert entrgi.read_prompts(str(path)) == expected


@pytest.mark.parametrize("name, text, message", [
    ("p.csv", "question,category\nHello,chat\n", "its header row (question, category) names no 'prompt' column"),
    ("p.csv", "prompt,category\nHello,chat,extra\n", "line 2: 2 columns in the header, another number in this row"),
    ("p.csv", "prompt,category\n,chat\n", "line 2: the prompt is empty"),
    ("p.json", '["Hello", {"prompt": "Why?"}]', "item 1 is not a JSON object (nor, in an array of strings, a string): "
                                                "the prompts files read are JSON lines"),
    ("p.json", "[1, 2]", "item 1 is not a JSON object"),
    ("p.jsonl", '"Hello"\n', "line 1 is not a JSON object (nor, in an array of strings, a string): the prompts files "
                             "read are JSON lines (an object a line), a JSON array of objects or of strings, CSV or "
                             "TSV with a header row naming the prompt column, or text (a prompt a line)"),
])
def test_a_prompts_file_in_no_format_read_is_refused_naming_the_formats(name, text, message, tmp_path, dream_dir,
                                                                        rm_dir, capsys, monkeypatch):
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setattr(entrgi, "open_dllm", lambda *a: pytest.fail("a model was opened"))
    with pytest.raises(SystemExit) as exit_info:
        run_main("--prompts-file", str(path), "--output", str(tmp_path / "o.jsonl"), dream_dir=dream_dir,
                 rm_dir=rm_dir)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("entrgi.py: error: ") and message in last, last


def test_a_csv_prompts_file_runs_with_its_columns_carried(tmp_path, dream_dir, rm_dir):
    src = tmp_path / "bench.csv"
    src.write_text("category,prompt\nchat,Hello\nscience,\"Why, then?\"\n")
    out = tmp_path / "o.jsonl"
    run_main("--prompts-file", str(src), "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    records = sorted(map(json.loads, prompt_lines(out)[0]), key=lambda r: r["index"])
    assert [(r["prompt"], r["category"]) for r in records] == [("Hello", "chat"), ("Why, then?", "science")]
